"""Tests for federated.privacy: clipping, noise, Opacus accounting, calibration, a DP run on
digits, and the quantum-noise bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError
from scipy import special

from federated import privacy
from federated.privacy import (
    PrivacyAccountant,
    PrivacyConfig,
    add_central_noise,
    calibrate_noise_multiplier,
    clip_update,
    compose_pure_dp,
    epsilon_after,
    gaussian_dp_epsilon,
    outcome_epsilon,
    private_mean,
    privatize_local,
    quantum_privacy_bound,
    resolve_noise_multiplier,
    zhou_ying_epsilon,
)
from qfl.errors import ConfigError, TrainingError
from quantum.config import NoiseConfig

CENTRAL = PrivacyConfig(mode="central", clip=0.7, noise_multiplier=1.3)
LOCAL = PrivacyConfig(mode="local", clip=0.5, noise_multiplier=2.0)


# --------------------------------------------------------------------------- config


def test_defaults_are_off():
    config = PrivacyConfig()
    assert not config.enabled and config.delta == 1e-5 and config.accountant == "rdp"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "none", "clip": 1.0}, "clip needs mode"),
        ({"mode": "central", "noise_multiplier": 1.0}, "needs clip"),
        ({"mode": "central", "clip": 1.0}, "exactly one"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1, "target_epsilon": 8}, "exactly"),
        ({"mode": "local", "clip": 1.0, "noise_multiplier": 1.0, "rounds": 5}, "rounds"),
        ({"mode": "local", "clip": 1.0, "noise_multiplier": 1.0, "amplification": True}, "local"),
        ({"mode": "central", "clip": 0.0, "noise_multiplier": 1.0}, "clip"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "delta": 1.0}, "delta"),
        ({"mode": "global"}, "mode"),
        ({"mode": "central", "clip": 1.0, "noise_multiplier": 1.0, "sigma": 1.0}, "sigma"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, message):
    with pytest.raises(ValidationError, match=message):
        PrivacyConfig(**kwargs)


def test_config_is_frozen():
    with pytest.raises(ValidationError):
        CENTRAL.clip = 2.0  # type: ignore[misc]


# --------------------------------------------------------------------------- clipping, noise


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-1e6, 1e6, width=32)),
    st.floats(0.01, 100.0),
)
def test_clipping_bounds_every_contribution(delta, clip):
    clipped = clip_update(delta, clip)
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    assert np.linalg.norm(clipped.astype(np.float64)) <= clip * (1 + 1e-5)
    if norm <= clip:
        np.testing.assert_array_equal(clipped, delta)
    elif norm > 0:  # same direction
        cos = np.dot(clipped, delta) / (np.linalg.norm(clipped) * norm)
        assert cos == pytest.approx(1.0, abs=1e-4)


def test_clipping_rejects_bad_input():
    np.testing.assert_array_equal(clip_update(np.zeros(3), 1.0), np.zeros(3))
    with pytest.raises(TrainingError, match="non-finite"):
        clip_update(np.array([np.inf, 1.0]), 1.0)
    with pytest.raises(TrainingError, match="> 0"):
        clip_update(np.ones(3), 0.0)


def test_one_outlier_moves_the_central_mean_by_at_most_c_over_m():
    deltas = [np.zeros(10, dtype=np.float32) for _ in range(9)] + [np.full(10, 1e6, np.float32)]
    config = PrivacyConfig(mode="central", clip=2.0, noise_multiplier=0.0)
    mean = private_mean(deltas, config, 0.0, np.random.default_rng(0))
    assert np.linalg.norm(mean) == pytest.approx(2.0 / 10, rel=1e-6)


def test_central_noise_has_std_z_times_c():
    rng = np.random.default_rng(0)
    noised = add_central_noise(np.zeros(400_000), CENTRAL, 1.3, rng)
    assert noised.std() == pytest.approx(1.3 * 0.7, rel=0.01)
    assert abs(noised.mean()) < 0.01


def test_local_noise_has_std_z_times_c_around_the_clipped_update():
    rng = np.random.default_rng(1)
    delta = np.zeros(300_000, dtype=np.float32)
    delta[0] = 10.0  # clipped to 0.5
    out = privatize_local(delta, LOCAL, 2.0, rng).astype(np.float64)
    assert out[1:].std() == pytest.approx(2.0 * 0.5, rel=0.01)
    small = np.array([10.0, 0.0], dtype=np.float32)
    draws = [privatize_local(small, LOCAL, 2.0, np.random.default_rng(s))[0] for s in range(4000)]
    assert np.mean(draws) == pytest.approx(0.5, abs=0.06)  # noise around the clipped value


def test_noise_generators_are_secret_keyed_and_distinct():
    master = bytes(range(32))
    draw = [privacy.noise_rng(master, t, k).normal() for t in (0, 1) for k in (None, 0, 1)]
    assert len(set(draw)) == 6
    assert privacy.noise_rng(master, 1, 0).normal() == draw[4]
    assert privacy.noise_rng(bytes(32), 1, 0).normal() != draw[4]
    with pytest.raises(ValueError, match="master secret"):
        privacy.noise_rng(b"public", 0)


def test_private_mean_is_reproducible_and_checks_mode():
    deltas = [np.ones(5, dtype=np.float32) * k for k in range(3)]
    a = private_mean(deltas, CENTRAL, 1.3, np.random.default_rng(7), denominator=10)
    b = private_mean(deltas, CENTRAL, 1.3, np.random.default_rng(7), denominator=10)
    np.testing.assert_array_equal(a, b)
    local = private_mean(deltas, LOCAL, 2.0, np.random.default_rng(7))
    np.testing.assert_allclose(local, np.ones(5))  # local: already noised, plain mean
    with pytest.raises(TrainingError):
        private_mean(deltas, PrivacyConfig(), 1.0, np.random.default_rng(0))
    with pytest.raises(TrainingError, match="central"):
        add_central_noise(np.zeros(3), LOCAL, 1.0, np.random.default_rng(0))


# --------------------------------------------------------------------------- accounting


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Opacus' PRV at rate 1: log(0)
@pytest.mark.parametrize("name", ["rdp", "prv"])
@pytest.mark.parametrize(
    ("z", "rate", "rounds"), [(1.0, 1.0, 10), (1.1, 0.01, 300), (4.0, 1.0, 50)]
)
def test_epsilon_matches_opacus(name, z, rate, rounds):
    from opacus.accountants import PRVAccountant, RDPAccountant

    config = PrivacyConfig(mode="central", clip=1.0, noise_multiplier=z, accountant=name)
    accountant = PrivacyAccountant(config, z, rate)
    reference = RDPAccountant() if name == "rdp" else PRVAccountant()
    for _ in range(rounds):
        accountant.step()
        reference.step(noise_multiplier=z, sample_rate=rate)
    if name == "rdp":
        expected = reference.get_epsilon(delta=1e-5, alphas=privacy.RDP_ORDERS)
    else:
        expected = reference.get_epsilon(delta=1e-5, eps_error=privacy.PRV_EPS_ERROR)
    assert accountant.epsilon() == pytest.approx(expected, rel=1e-9)
    assert accountant.rounds == rounds


@pytest.mark.parametrize(("z", "rounds"), [(1.0, 1), (1.0, 10), (2.0, 100), (0.8, 30)])
def test_accountants_agree_with_the_exact_gaussian_mechanism(z, rounds):
    """At sample rate 1, T rounds are exactly sqrt(T)/z-Gaussian DP (own formula, cross-check)."""
    exact = gaussian_dp_epsilon(math.sqrt(rounds) / z, 1e-5)
    rdp = epsilon_after(z, 1.0, rounds, 1e-5, "rdp")
    prv = epsilon_after(z, 1.0, rounds, 1e-5, "prv")
    assert prv == pytest.approx(exact, abs=0.05)  # PRV is numerically exact
    assert exact <= rdp <= 1.12 * exact  # RDP is an upper bound, a few % loose


def test_known_value_of_the_gaussian_mechanism():
    # one release with z = 1 at delta = 1e-5: eps = 4.3772 (analytic Gaussian mechanism)
    assert gaussian_dp_epsilon(1.0, 1e-5) == pytest.approx(4.3772, abs=1e-3)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    config = PrivacyConfig(mode="central", clip=1.0, noise_multiplier=1.0)
    accountant = PrivacyAccountant(config, 1.0, 0.1)
    assert accountant.epsilon() == 0.0
    history = []
    for _ in range(20):
        accountant.step()
        history.append(accountant.epsilon())
    assert all(b > a for a, b in zip(history, history[1:], strict=False))
    assert epsilon_after(2.0, 0.1, 20, 1e-5) < history[-1]
    metrics = accountant.metrics()
    assert metrics["dp_epsilon"] == history[-1] and metrics["dp_rounds"] == 20.0


def test_amplification_only_when_asked():
    assert privacy.sample_rate(CENTRAL, 10, 100) == 1.0
    amplified = CENTRAL.model_copy(update={"amplification": True})
    assert privacy.sample_rate(amplified, 10, 100) == 0.1
    assert epsilon_after(1.3, 0.1, 50, 1e-5) < epsilon_after(1.3, 1.0, 50, 1e-5)
    with pytest.raises(ConfigError):
        privacy.sample_rate(CENTRAL, 11, 10)


def test_zero_noise_is_infinite_epsilon_and_local_mode_halves_z():
    no_noise = PrivacyAccountant(PrivacyConfig(mode="central", clip=1, noise_multiplier=0), 0, 1)
    no_noise.step()
    assert math.isinf(no_noise.epsilon())
    local = PrivacyAccountant(LOCAL, 2.0, 1.0)
    local.step()
    assert local.multiplier == 1.0
    assert local.epsilon() == pytest.approx(epsilon_after(1.0, 1.0, 1, 1e-5))
    with pytest.raises(ConfigError):
        PrivacyAccountant(PrivacyConfig(), 1.0, 1.0)


@pytest.mark.parametrize("mode", ["central", "local"])
def test_calibrated_noise_reaches_the_target_tightly(mode):
    config = PrivacyConfig(mode=mode, clip=1.0, target_epsilon=8.0, delta=1e-5)
    z = resolve_noise_multiplier(config, rounds=20, clients_per_round=100, n_clients=100)
    accounted = privacy.accounted_multiplier(config, z)
    assert epsilon_after(accounted, 1.0, 20, 1e-5) <= 8.0
    assert epsilon_after(accounted * 0.97, 1.0, 20, 1e-5) > 8.0
    if mode == "local":
        central = PrivacyConfig(mode="central", clip=1.0, target_epsilon=8.0)
        assert z == pytest.approx(2 * calibrate_noise_multiplier(central, rounds=20, rate=1.0))


def test_calibration_uses_planned_rounds_and_fixed_z_passes_through():
    planned = PrivacyConfig(mode="central", clip=1.0, target_epsilon=4.0, rounds=50)
    z50 = calibrate_noise_multiplier(planned, rounds=5, rate=1.0)
    z5 = calibrate_noise_multiplier(planned.model_copy(update={"rounds": None}), rounds=5, rate=1)
    assert z50 > z5
    assert resolve_noise_multiplier(CENTRAL, rounds=5, clients_per_round=1, n_clients=1) == 1.3


# --------------------------------------------------------------------------- DP run on digits


@pytest.fixture
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_dp_fedavg_on_digits_at_epsilon_8_reaches_85_percent(one_torch_thread):
    """100 clients, all in every round (no amplification), 20 rounds, central DP at
    (8, 1e-5): a linear model reaches ~0.88-0.91 test accuracy (noise-free: ~0.95)."""
    from federated.aggregate import apply_update
    from federated.config import ModelConfig, TrainConfig
    from federated.data import build_federated_data
    from federated.models import build_model, get_flat, set_flat
    from federated.train import evaluate, local_train

    n, rounds = 100, 20
    data = build_federated_data("digits", n_clients=n, partition="iid", seed=0)
    model = build_model(ModelConfig(hidden=()), data.input_shape, data.num_classes, seed=0)
    weights = get_flat(model)
    config = PrivacyConfig(mode="central", clip=0.5, target_epsilon=8.0, delta=1e-5)
    z = resolve_noise_multiplier(config, rounds=rounds, clients_per_round=n, n_clients=n)
    accountant = PrivacyAccountant(config, z, privacy.sample_rate(config, n, n))
    rng = np.random.default_rng(1)
    train = TrainConfig(lr=0.1, epochs=2, batch_size=16)
    for t in range(rounds):
        deltas = [
            local_train(model, data.client(k), weights, train, seed=1000 * t + k).delta
            for k in range(n)
        ]
        weights = apply_update(weights, private_mean(deltas, config, z, rng), server_lr=2.0)
        accountant.step()
    set_flat(model, weights)
    assert 7.5 < accountant.epsilon() <= 8.0
    assert z > 2.5  # the noise is real: std of the summed noise is z * C
    assert evaluate(model, data.test).accuracy >= 0.85


# --------------------------------------------------------------------------- quantum bound


def test_zhou_ying_known_values():
    assert zhou_ying_epsilon(0.5, 2) == pytest.approx(math.log(3))
    assert zhou_ying_epsilon(0.1, 16, 0.5) == pytest.approx(math.log(1 + 0.9 * 16 * 0.5 / 0.1))
    assert zhou_ying_epsilon(1.0, 4) == 0.0
    assert math.isinf(zhou_ying_epsilon(0.0, 4))
    with pytest.raises(ValueError):
        zhou_ying_epsilon(0.5, 1)


@pytest.mark.parametrize("p1", [0.01, 0.1, 0.5])
def test_one_qubit_outcome_bound_is_zhou_ying(p1):
    noise = NoiseConfig(kind="parametric", p1=p1)
    assert outcome_epsilon(noise) == pytest.approx(zhou_ying_epsilon(p1, 2))


def test_outcome_epsilon_combines_depolarizing_and_readout():
    p1, r = 0.1, 0.05
    g = (1 - (1 - p1) * (1 - 2 * r)) / 2
    noise = NoiseConfig(kind="parametric", p1=p1, readout=r)
    assert outcome_epsilon(noise) == pytest.approx(math.log((1 - g) / g))
    assert outcome_epsilon(noise) < outcome_epsilon(NoiseConfig(kind="parametric", p1=p1))
    relax = NoiseConfig(kind="parametric", p1=p1, readout=r, t1_us=50, t2_us=70)
    assert outcome_epsilon(relax) == pytest.approx(math.log((1 - r) / r))  # readout only
    assert math.isinf(outcome_epsilon(NoiseConfig()))
    assert math.isinf(outcome_epsilon(NoiseConfig(kind="parametric", p2=0.1)))


def test_outcome_bound_holds_on_the_noisy_aer_circuit():
    """Exact noisy expectations of the real ansatz: |<P>| <= (1 - p1)(1 - 2r) for any input,
    so each +-1 outcome has probability in [g, 1 - g]."""
    from quantum.circuits import build_circuit
    from quantum.config import CircuitConfig
    from quantum.executors.aer import AerExecutor

    circuit = build_circuit(CircuitConfig(qubits=2, layers=2))
    noise = NoiseConfig(kind="parametric", p1=0.05, p2=0.02, readout=0.03)
    executor = AerExecutor(circuit, precision=0.0, noise=noise, seed=0)
    rng = np.random.default_rng(0)
    inputs = np.vstack([np.zeros((1, 2)), rng.uniform(-np.pi, np.pi, (15, 2))])
    bound = (1 - 0.05) * (1 - 2 * 0.03)
    for weights in (np.zeros(circuit.num_weights), rng.uniform(-np.pi, np.pi, circuit.num_weights)):
        e = executor.expectations(inputs, weights)
        assert np.abs(e).max() <= bound + 1e-9
    # the all-zero circuit comes close: the bound is not loose by orders of magnitude
    zero = executor.expectations(np.zeros((1, 2)), np.zeros(circuit.num_weights))
    assert np.abs(zero).max() > 0.8 * bound


def kairouz_delta(eps0: float, k: int, i: int) -> float:
    """delta_i of Kairouz et al. (2015) Thm 3.3 at epsilon = (k - 2i) eps0."""
    total = sum(
        special.comb(k, j, exact=True)
        * (math.exp((k - j) * eps0) - math.exp((k - 2 * i + j) * eps0))
        for j in range(i)
    )
    return total / (1 + math.exp(eps0)) ** k


@pytest.mark.parametrize(("eps0", "k", "i"), [(0.5, 10, 2), (1.0, 20, 5), (0.1, 50, 20)])
def test_composition_matches_kairouz_closed_form(eps0, k, i):
    delta = kairouz_delta(eps0, k, i)
    assert compose_pure_dp(eps0, k, delta) == pytest.approx((k - 2 * i) * eps0, rel=1e-6)


def test_composition_limits_and_advanced_composition():
    assert compose_pure_dp(1.3, 1, 0.0) == 1.3
    assert compose_pure_dp(1.3, 7, 0.0) == pytest.approx(9.1)
    assert compose_pure_dp(0.0, 7, 1e-5) == 0.0 and compose_pure_dp(2.0, 0, 1e-5) == 0.0
    assert math.isinf(compose_pure_dp(math.inf, 3, 1e-5))
    eps0, k, delta = 0.05, 1000, 1e-5
    advanced = math.sqrt(2 * k * math.log(1 / delta)) * eps0 + k * eps0 * math.expm1(eps0)
    optimal = compose_pure_dp(eps0, k, delta)
    assert optimal < advanced < k * eps0


def test_quantum_bound_composes_every_outcome_and_states_its_scope():
    noise = NoiseConfig(kind="parametric", p1=0.3, readout=0.1)
    evaluations = privacy.evaluations_per_example(num_parameters=4, epochs=1)
    assert evaluations == 9
    small = quantum_privacy_bound(noise, shots=4, observables=2, evaluations=1, delta=1e-5)
    big = quantum_privacy_bound(noise, shots=64, observables=2, evaluations=evaluations, delta=1e-5)
    assert small.outcomes == 8 and big.outcomes == 64 * 2 * 9
    assert small.outcome_epsilon == outcome_epsilon(noise)
    assert 0 < small.epsilon < big.epsilon
    assert small.epsilon == pytest.approx(compose_pure_dp(small.outcome_epsilon, 8, 1e-5))
    exact = quantum_privacy_bound(noise, shots=None, observables=2, evaluations=3)
    assert math.isinf(exact.epsilon)
    assert "not the whole update" in big.scope and "quantum layer" in big.scope
    assert set(big.metrics()) == {"qdp_epsilon", "qdp_delta", "qdp_outcome_epsilon", "qdp_outcomes"}
