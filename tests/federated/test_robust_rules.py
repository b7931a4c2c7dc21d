"""Robust and hybrid rules in a whole (Ray-free) federation on digits.

Ten clients train an MLP for a few rounds with the real data, model and
training code; the server aggregates with the rule under test. With 20% of
the clients Byzantine (sign-flip, scale 5), FedAvg collapses while a robust
rule stays within 3 points of the clean FedAvg run. With half of the quantum
clients very noisy, the hybrid rule (Eq. 6-7) beats FedAvg by a wide margin.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from federated.aggregate import AggregationConfig, Aggregator
from federated.attacks import AttackConfig, attack_rng, corrupt_delta, select_attackers
from federated.config import ModelConfig, TrainConfig
from federated.data import FederatedData, build_federated_data
from federated.messages import ClientUpdate
from federated.models import build_model, get_flat, quantum_param_mask, set_flat
from federated.sampling import client_seed
from federated.train import evaluate, local_train

SEED = 0
CLIENTS = 10
ROUNDS = 8


def federate(
    data: FederatedData,
    model,
    train: TrainConfig,
    aggregator: Aggregator,
    rounds: int,
    corrupt: Callable[[int, int, np.ndarray], tuple[np.ndarray, float]],
) -> float:
    """Run `rounds` rounds with every client; `corrupt(t, k, delta)` -> (sent delta, variance)."""
    weights = get_flat(model)
    for t in range(rounds):
        updates = []
        for k in range(data.n_clients):
            result = local_train(
                model, data.client(k), weights, train, seed=client_seed(SEED, t, k)
            )
            delta, variance = corrupt(t, k, result.delta)
            updates.append(
                ClientUpdate(
                    client_id=k,
                    round=t,
                    num_samples=result.num_samples,
                    loss=result.loss,
                    delta=delta,
                    seconds=result.seconds,
                    path="quantum" if variance > 0 else "classical",
                    noise_variance=variance,
                )
            )
        weights, _ = aggregator.step(weights, updates)
    set_flat(model, weights)
    return evaluate(model, data.test).accuracy


# --------------------------------------------------------------------------- Byzantine clients

MLP = ModelConfig(hidden=(32,))
MLP_TRAIN = TrainConfig(epochs=2, batch_size=32, lr=0.05)
SIGN_FLIP = AttackConfig(kind="sign_flip", fraction=0.2, scale=5.0)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models: a second intra-op thread only adds spin-waits on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits() -> FederatedData:
    return build_federated_data("digits", n_clients=CLIENTS, partition="iid", seed=SEED)


def _byzantine_run(data: FederatedData, config: AggregationConfig, attack: AttackConfig) -> float:
    model = build_model(MLP, data.input_shape, data.num_classes, seed=SEED)
    attackers = select_attackers(CLIENTS, attack, SEED)

    def corrupt(t: int, k: int, delta: np.ndarray) -> tuple[np.ndarray, float]:
        if k in attackers:
            return corrupt_delta(delta, attack, attack_rng(client_seed(SEED, t, k))), 0.0
        return delta, 0.0

    return federate(data, model, MLP_TRAIN, Aggregator(config), ROUNDS, corrupt)


@pytest.fixture(scope="module")
def clean_accuracy(digits) -> float:
    accuracy = _byzantine_run(digits, AggregationConfig(), AttackConfig())
    assert accuracy > 0.88  # the federation really learns
    return accuracy


def test_two_of_ten_clients_attack(digits) -> None:
    assert len(select_attackers(CLIENTS, SIGN_FLIP, SEED)) == 2


def test_fedavg_collapses_under_sign_flip(digits, clean_accuracy: float) -> None:
    attacked = _byzantine_run(digits, AggregationConfig(), SIGN_FLIP)
    assert attacked < clean_accuracy - 0.10


@pytest.mark.parametrize(
    ("config", "tolerance"),
    [
        (AggregationConfig(rule="trimmed_mean", trim_fraction=0.2), 0.03),
        (AggregationConfig(rule="multi_krum", byzantine=2), 0.03),
        # the median averages nothing: less efficient (2/pi of the mean's for Gaussian spread)
        (AggregationConfig(rule="median"), 0.04),
        # Krum keeps one update a round: a noisier step, so a looser bound
        (AggregationConfig(rule="krum", byzantine=2), 0.05),
    ],
    ids=lambda v: getattr(v, "rule", str(v)),
)
def test_robust_rule_stays_close_to_the_clean_run(
    digits, clean_accuracy: float, config: AggregationConfig, tolerance: float
) -> None:
    attacked = _byzantine_run(digits, config, SIGN_FLIP)
    assert attacked >= clean_accuracy - tolerance


def test_gaussian_attackers_are_filtered_by_median(digits, clean_accuracy: float) -> None:
    attack = AttackConfig(kind="gaussian", fraction=0.2, noise_std=1.0)
    assert _byzantine_run(digits, AggregationConfig(), attack) < clean_accuracy - 0.10
    assert _byzantine_run(digits, AggregationConfig(rule="median"), attack) >= (
        clean_accuracy - 0.03
    )


# --------------------------------------------------------------------------- noisy quantum clients

QUANTUM_CLIENTS = range(4, 10)  # clients 0-3 classical
NOISY = (7, 8, 9)  # half of the quantum clients
NOISY_VARIANCE = 9.0  # std 3 rad of noise on every circuit angle
SHOT_VARIANCE = 1e-4  # the others: small, well-characterised shot noise


def _hybrid_run(data: FederatedData, config: AggregationConfig, rounds: int = 6) -> float:
    from quantum.config import QuantumConfig

    quantum = QuantumConfig(qubits=4, layers=2, shots=None)
    hybrid = ModelConfig(kind="hybrid", hidden=(16,))
    model = build_model(hybrid, data.input_shape, data.num_classes, seed=SEED, quantum=quantum)
    mask = quantum_param_mask(model)
    assert mask.sum() == 8  # 4 qubits x 2 layers of RY angles

    def corrupt(t: int, k: int, delta: np.ndarray) -> tuple[np.ndarray, float]:
        if k not in QUANTUM_CLIENTS:
            return delta, 0.0
        variance = NOISY_VARIANCE if k in NOISY else SHOT_VARIANCE
        noise = np.random.default_rng([SEED, t, k]).normal(0.0, np.sqrt(variance), mask.sum())
        noisy = delta.copy()
        noisy[mask] += noise.astype(np.float32)
        return noisy, variance

    train = TrainConfig(optimizer="adam", epochs=2, batch_size=32, lr=0.01)
    return federate(data, model, train, Aggregator(config, mask), rounds, corrupt)


def test_hybrid_rule_beats_fedavg_with_noisy_quantum_clients(digits) -> None:
    fedavg = _hybrid_run(digits, AggregationConfig())
    hybrid = _hybrid_run(digits, AggregationConfig(rule="hybrid"))
    assert hybrid > fedavg + 0.15
    assert hybrid > 0.4  # the hybrid model learns (10 classes: chance is 0.1)
