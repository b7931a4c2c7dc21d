"""Tests for federated.train (local training, evaluation) and federated.client.ClientRunner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from federated.client import ClientRunner
from federated.config import ModelConfig, TrainConfig
from federated.data import ArrayDataset, build_federated_data
from federated.messages import ClientTask, ClientUpdate
from federated.models import build_model, get_flat, set_flat
from federated.train import LocalResult, evaluate, local_train
from qfl.errors import TrainingError


def separable_with_plane(
    n: int = 120, dim: int = 4, seed: int = 0
) -> tuple[ArrayDataset, np.ndarray]:
    """A linearly separable two-class set (with a margin) and the normal of its hyperplane."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    w = rng.standard_normal(dim)
    score = x @ w
    x += (0.5 * np.sign(score)[:, None] * w / np.linalg.norm(w)).astype(np.float32)
    return ArrayDataset(x, (score > 0).astype(np.int64)), w


def separable(n: int = 120, dim: int = 4, seed: int = 0) -> ArrayDataset:
    return separable_with_plane(n, dim, seed)[0]


def fresh(hidden: tuple[int, ...] = (8,), dropout: float = 0.0, seed: int = 0):
    model = build_model(ModelConfig(hidden=hidden, dropout=dropout), (4,), 2, seed=seed)
    return model, get_flat(model)


SGD = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, epochs=3, batch_size=16)
ADAM = TrainConfig(optimizer="adam", lr=0.01, epochs=3, batch_size=16)


# --------------------------------------------------------------------------- local_train


@pytest.mark.parametrize("config", [SGD, ADAM], ids=["sgd", "adam"])
def test_local_train_reduces_loss(config: TrainConfig) -> None:
    data = separable()
    model, w0 = fresh()
    before = evaluate(model, data)
    result = local_train(model, data, w0, config, seed=1)
    assert isinstance(result, LocalResult)
    assert result.delta.dtype == np.float32
    assert result.delta.shape == w0.shape
    assert np.linalg.norm(result.delta) > 0
    assert result.num_samples == len(data)
    assert np.isfinite(result.loss)
    assert result.seconds >= 0
    set_flat(model, w0 + result.delta)
    after = evaluate(model, data)
    assert after.loss < before.loss
    assert after.loss < 0.5 * before.loss
    assert after.accuracy >= 0.95


def test_local_train_delta_is_trained_minus_global() -> None:
    data = separable()
    model, w0 = fresh()
    w0_copy = w0.copy()
    result = local_train(model, data, w0, SGD, seed=1)
    assert w0.tobytes() == w0_copy.tobytes(), "global weights must not be modified"
    # the model is left holding the trained weights w_k = w_t + delta
    assert (get_flat(model) - w0).astype(np.float32).tobytes() == result.delta.tobytes()


def test_local_train_starts_from_global_weights_not_model_state() -> None:
    data = separable()
    model_a, w0 = fresh(seed=0)
    model_b, _ = fresh(seed=99)  # different initial state, overwritten by w0
    a = local_train(model_a, data, w0, SGD, seed=3)
    b = local_train(model_b, data, w0, SGD, seed=3)
    assert a.delta.tobytes() == b.delta.tobytes()


@pytest.mark.parametrize("dropout", [0.0, 0.5])
@pytest.mark.parametrize("config", [SGD, ADAM], ids=["sgd", "adam"])
def test_local_train_deterministic_in_seed(config: TrainConfig, dropout: float) -> None:
    data = separable()
    model, w0 = fresh(dropout=dropout)
    a = local_train(model, data, w0, config, seed=11)
    b = local_train(model, data, w0, config, seed=11)
    c = local_train(model, data, w0, config, seed=12)
    assert a.delta.tobytes() == b.delta.tobytes()
    assert a.loss == b.loss
    assert not np.array_equal(a.delta, c.delta)


def test_local_train_leaves_global_rng_untouched() -> None:
    data = separable()
    model, w0 = fresh(dropout=0.5)
    torch.manual_seed(2024)
    before = torch.get_rng_state()
    local_train(model, data, w0, SGD, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


def test_proximal_term_shrinks_the_update() -> None:
    data = separable()
    config = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.0, epochs=3, batch_size=16)
    model, w0 = fresh()
    norms = [
        float(np.linalg.norm(local_train(model, data, w0, config, seed=4, prox_mu=mu).delta))
        for mu in (0.0, 1.0, 10.0)
    ]
    assert norms[0] > norms[1] > norms[2] > 0
    assert norms[2] < 0.5 * norms[0]


def test_large_prox_mu_keeps_update_small() -> None:
    data = separable()
    config = TrainConfig(optimizer="sgd", lr=0.01, momentum=0.0, epochs=3, batch_size=16)
    model, w0 = fresh()
    free = local_train(model, data, w0, config, seed=4, prox_mu=0.0)
    prox = local_train(model, data, w0, config, seed=4, prox_mu=100.0)
    assert np.all(np.isfinite(prox.delta))
    assert np.linalg.norm(prox.delta) < 0.2 * np.linalg.norm(free.delta)


def test_train_loss_is_mean_over_last_epoch() -> None:
    """With lr tiny the weights barely move, so the epoch loss equals the initial loss."""
    data = separable()
    model, w0 = fresh()
    initial = evaluate(model, data).loss
    config = TrainConfig(optimizer="sgd", lr=1e-9, momentum=0.0, epochs=1, batch_size=7)
    result = local_train(model, data, w0, config, seed=0)
    assert result.loss == pytest.approx(initial, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lr": 0},
        {"lr": -1},
        {"momentum": 1.0},
        {"epochs": 0},
        {"batch_size": 0},
        {"optimizer": "rmsprop"},
        {"weight_decay": -0.1},
        {"nesterov": True},
    ],
)
def test_train_config_rejects(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        TrainConfig(**kwargs)


# --------------------------------------------------------------------------- evaluate


def linear_model(weight: np.ndarray, bias: np.ndarray) -> torch.nn.Module:
    classes, features = weight.shape
    model = build_model(ModelConfig(hidden=()), (features,), classes, seed=0)
    set_flat(model, np.concatenate([weight.ravel(), bias]).astype(np.float32))
    return model


def reference_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    m = logits.max(axis=1, keepdims=True)
    logsumexp = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    return float(np.mean(logsumexp - logits[np.arange(len(y)), y]))


@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_evaluate_hand_made_case(batch_size: int) -> None:
    weight = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    bias = np.array([0.0, 0.5, 0.0])
    model = linear_model(weight, bias)
    x = np.array([[1, 0], [0, 1], [1, 0], [-3, -3], [0.25, 0]], dtype=np.float32)
    y = np.array([0, 1, 1, 2, 0])
    # logits: [2,.5,-1]->0 ok, [0,1.5,-1]->1 ok, [2,.5,-1]->0 wrong, [-6,-2.5,6]->2 ok,
    # [.5,.5,-.25]->tie, argmax takes the first (0) ok: 4 of 5 correct
    logits = x.astype(np.float64) @ weight.T + bias
    result = evaluate(model, ArrayDataset(x, y), batch_size=batch_size)
    assert result.accuracy == pytest.approx(4 / 5)
    assert result.loss == pytest.approx(reference_cross_entropy(logits, y), rel=1e-6)
    torch_loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(y)
    ).item()
    assert result.loss == pytest.approx(torch_loss, rel=1e-6)


def test_evaluate_perfect_classifier() -> None:
    data, w = separable_with_plane()
    # the generating hyperplane itself, scaled: class 1 when x @ w > 0
    model = linear_model(np.stack([-w, w]) * 50, np.zeros(2))
    result = evaluate(model, data)
    assert result.accuracy == 1.0
    assert 0 <= result.loss < 1e-3


def test_evaluate_matches_functional_cross_entropy_on_random_model() -> None:
    data = separable(n=300)
    model, _ = fresh(hidden=(16, 8), seed=3)
    result = evaluate(model, data, batch_size=64)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
        target = torch.from_numpy(data.y)
        expected_loss = torch.nn.functional.cross_entropy(logits, target).item()
        expected_acc = (logits.argmax(1) == target).double().mean().item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(expected_acc)


# --------------------------------------------------------------------------- ClientRunner


@pytest.fixture(scope="module")
def iris():
    return build_federated_data("iris", n_clients=3, partition="iid", seed=0)


def make_runner(iris, prox_mu: float = 0.0) -> tuple[ClientRunner, np.ndarray]:
    config = ModelConfig(hidden=(8,))
    runner = ClientRunner(iris, config, TrainConfig(epochs=2, batch_size=8), prox_mu=prox_mu)
    weights = get_flat(build_model(config, iris.input_shape, iris.num_classes, seed=42))
    return runner, weights


@pytest.mark.parametrize("client_id", [0, 1, 2])
def test_client_runner_returns_update(iris, client_id: int) -> None:
    runner, weights = make_runner(iris)
    task = ClientTask(client_id=client_id, round=4, seed=123)
    result = runner.run(task, weights)
    assert isinstance(result, ClientUpdate)
    assert result.client_id == client_id
    assert result.round == 4
    assert result.num_samples == len(iris.client(client_id))
    assert result.delta.dtype == np.float32
    assert result.delta.shape == weights.shape
    assert np.linalg.norm(result.delta) > 0
    assert result.nbytes == weights.size * 4
    assert np.isfinite(result.loss)
    assert result.seconds >= 0


def test_client_runner_matches_local_train(iris) -> None:
    runner, weights = make_runner(iris)
    result = runner.run(ClientTask(client_id=1, round=0, seed=9), weights)
    model = build_model(ModelConfig(hidden=(8,)), iris.input_shape, iris.num_classes, seed=0)
    direct = local_train(
        model, iris.client(1), weights, TrainConfig(epochs=2, batch_size=8), seed=9
    )
    assert result.delta.tobytes() == direct.delta.tobytes()


def test_client_runner_no_state_leaks_between_clients(iris) -> None:
    runner, weights = make_runner(iris)
    task = ClientTask(client_id=0, round=1, seed=7)
    first = runner.run(task, weights)
    runner.run(ClientTask(client_id=2, round=1, seed=8), weights)
    again = runner.run(task, weights)
    assert first.delta.tobytes() == again.delta.tobytes()


def test_client_runner_uses_prox_mu(iris) -> None:
    free_runner, weights = make_runner(iris, prox_mu=0.0)
    prox_runner, _ = make_runner(iris, prox_mu=5.0)
    task = ClientTask(client_id=0, round=0, seed=1)
    free = free_runner.run(task, weights)
    prox = prox_runner.run(task, weights)
    assert np.linalg.norm(prox.delta) < np.linalg.norm(free.delta)


@pytest.mark.parametrize("client_id", [3, 100])
def test_client_runner_rejects_unregistered_client(iris, client_id: int) -> None:
    runner, weights = make_runner(iris)
    with pytest.raises(TrainingError, match=f"client {client_id} is not registered"):
        runner.run(ClientTask(client_id=client_id, round=0, seed=0), weights)


def test_client_runner_rejects_wrong_weight_length(iris) -> None:
    runner, weights = make_runner(iris)
    with pytest.raises(TrainingError):
        runner.run(ClientTask(client_id=0, round=0, seed=0), weights[:-1])
