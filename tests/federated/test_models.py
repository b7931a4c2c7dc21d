"""Tests for federated.models: model families, flat weight vectors and their hash."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from federated.config import ModelConfig
from federated.models import MLP, SmallCNN, build_model, get_flat, set_flat, weights_hash
from qfl.errors import TrainingError


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("config", "input_shape", "classes", "cls", "expected_params"),
    [
        (ModelConfig(hidden=(64,)), (64,), 10, MLP, 64 * 64 + 64 + 64 * 10 + 10),
        (ModelConfig(hidden=(8, 4)), (4,), 3, MLP, 4 * 8 + 8 + 8 * 4 + 4 + 4 * 3 + 3),
        (ModelConfig(hidden=()), (5,), 2, MLP, 5 * 2 + 2),
        (ModelConfig(hidden=(16,)), (1, 8, 8), 10, MLP, 64 * 16 + 16 + 16 * 10 + 10),
        (ModelConfig(hidden=(16,), dropout=0.5), (30,), 2, MLP, 30 * 16 + 16 + 16 * 2 + 2),
        (
            ModelConfig(kind="cnn", channels=(4, 8)),
            (1, 8, 8),
            10,
            SmallCNN,
            (1 * 4 * 9 + 4) + (4 * 8 * 9 + 8) + (8 * 10 + 10),
        ),
        (
            ModelConfig(kind="cnn", channels=(6,)),
            (3, 32, 32),
            10,
            SmallCNN,
            (3 * 6 * 9 + 6) + (6 * 10 + 10),
        ),
    ],
)
def test_build_model_shapes(config, input_shape, classes, cls, expected_params) -> None:
    model = build_model(config, input_shape, classes, seed=0)
    assert isinstance(model, cls)
    assert n_params(model) == expected_params
    assert get_flat(model).shape == (expected_params,)
    out = model(torch.zeros(5, *input_shape))
    assert out.shape == (5, classes)
    assert out.dtype == torch.float32


def test_cnn_needs_image_input() -> None:
    with pytest.raises(TrainingError, match="cnn needs"):
        build_model(ModelConfig(kind="cnn"), (64,), 10, seed=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden": (0,)},
        {"channels": (4, -1)},
        {"kind": "cnn", "channels": ()},
        {"dropout": 1.0},
        {"kind": "rnn"},
        {"width": 3},
    ],
)
def test_model_config_rejects(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("config", "shape"),
    [(ModelConfig(hidden=(32, 16)), (20,)), (ModelConfig(kind="cnn", channels=(4,)), (1, 8, 8))],
)
def test_same_seed_same_weights_different_seed_different(config, shape) -> None:
    a = get_flat(build_model(config, shape, 3, seed=7))
    b = get_flat(build_model(config, shape, 3, seed=7))
    c = get_flat(build_model(config, shape, 3, seed=8))
    assert a.tobytes() == b.tobytes()
    assert a.shape == c.shape
    assert not np.array_equal(a, c)


def test_build_model_leaves_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_model(ModelConfig(hidden=(32,)), (10,), 2, seed=5)
    assert torch.equal(torch.get_rng_state(), before)


def test_get_flat_is_float32_copy_in_state_dict_order() -> None:
    model = build_model(ModelConfig(hidden=(3,)), (2,), 2, seed=0)
    flat = get_flat(model)
    assert flat.dtype == np.float32
    expected = np.concatenate([t.detach().numpy().ravel() for t in model.state_dict().values()])
    assert flat.tobytes() == expected.tobytes()
    flat[:] = 42.0  # the vector is a copy: mutating it must not touch the model
    assert get_flat(model).tobytes() == expected.tobytes()


@pytest.mark.parametrize(
    ("config", "shape"),
    [(ModelConfig(hidden=(8, 4)), (6,)), (ModelConfig(kind="cnn", channels=(4, 4)), (2, 8, 8))],
)
def test_set_then_get_round_trips(config, shape) -> None:
    model = build_model(config, shape, 3, seed=0)
    size = get_flat(model).size
    target = np.random.default_rng(1).standard_normal(size).astype(np.float32)
    set_flat(model, target)
    assert get_flat(model).tobytes() == target.tobytes()
    # the parameters themselves changed (the forward pass sees the new weights)
    params = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    assert params.tobytes() == target.tobytes()


def test_set_flat_copies_its_input() -> None:
    model = build_model(ModelConfig(hidden=(4,)), (3,), 2, seed=0)
    target = np.arange(get_flat(model).size, dtype=np.float32)
    set_flat(model, target)
    target[:] = -1.0
    np.testing.assert_array_equal(get_flat(model), np.arange(target.size, dtype=np.float32))


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_set_flat_wrong_length_raises(delta: int) -> None:
    model = build_model(ModelConfig(hidden=(4,)), (3,), 2, seed=0)
    before = get_flat(model)
    with pytest.raises(TrainingError, match="shape"):
        set_flat(model, np.zeros(before.size + delta, dtype=np.float32))
    assert get_flat(model).tobytes() == before.tobytes()


def test_set_flat_wrong_rank_raises() -> None:
    model = build_model(ModelConfig(hidden=(4,)), (3,), 2, seed=0)
    size = get_flat(model).size
    with pytest.raises(TrainingError):
        set_flat(model, np.zeros((1, size), dtype=np.float32))


def test_set_flat_accepts_read_only_array_without_warning() -> None:
    model = build_model(ModelConfig(hidden=(4,)), (3,), 2, seed=0)
    target = np.linspace(-1, 1, get_flat(model).size, dtype=np.float32)
    target.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_flat(model, target)
    assert get_flat(model).tobytes() == target.tobytes()


def reference_hash(arr: np.ndarray) -> str:
    return hashlib.sha256(arr.astype("<f4").tobytes()).hexdigest()


@pytest.mark.parametrize(
    "arr",
    [
        np.arange(10, dtype=np.float32),
        np.random.default_rng(3).standard_normal(257).astype(np.float32),
        np.zeros(0, dtype=np.float32),
        np.arange(10, dtype=np.float32).astype(">f4"),  # big-endian input, same values
        np.arange(20, dtype=np.float32)[::2],  # non-contiguous view
    ],
)
def test_weights_hash_matches_independent_sha256(arr: np.ndarray) -> None:
    h = weights_hash(arr)
    assert h == reference_hash(arr)
    assert len(h) == 64
    assert int(h, 16) >= 0


def test_weights_hash_is_value_based_across_byte_order() -> None:
    little = np.arange(10, dtype="<f4")
    assert weights_hash(little) == weights_hash(little.astype(">f4"))


@pytest.mark.parametrize("index", [0, 5, 99])
@pytest.mark.parametrize("direction", [np.inf, -np.inf])
def test_weights_hash_changes_with_one_ulp(index: int, direction: float) -> None:
    arr = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    bumped = arr.copy()
    bumped[index] = np.nextafter(arr[index], np.float32(direction))
    assert bumped[index] != arr[index]
    assert weights_hash(bumped) != weights_hash(arr)
    assert weights_hash(arr.copy()) == weights_hash(arr)
