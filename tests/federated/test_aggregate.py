"""Tests for federated.aggregate: FedAvg, the server step and order-independent aggregation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated.aggregate import RULES, aggregate_updates, apply_update, fedavg
from federated.messages import ClientUpdate
from qfl.errors import TrainingError


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def update(client_id: int, delta: np.ndarray, num_samples: int = 1) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id, round=0, num_samples=num_samples, loss=0.0, delta=delta, seconds=0.0
    )


# --------------------------------------------------------------------------- fedavg


@pytest.mark.parametrize(
    ("deltas", "weights", "expected"),
    [
        ([f32(1, 2), f32(3, 4)], [1, 3], f32(2.5, 3.5)),
        ([f32(1, 2), f32(3, 4)], [1, 1], f32(2, 3)),
        ([f32(0, 0), f32(8, -8)], [3, 1], f32(2, -2)),
        ([f32(1), f32(2), f32(6)], [1, 1, 1], f32(3)),
        ([f32(5, 5), f32(-7, 9)], [0, 2], f32(-7, 9)),  # a zero weight drops that update
        ([f32(10, 20, 30), f32(0, 0, 0), f32(-10, 0, 10)], [2, 1, 1], f32(2.5, 10, 17.5)),
    ],
)
def test_fedavg_known_values(deltas, weights, expected) -> None:
    result = fedavg(deltas, weights)
    assert result.dtype == np.float32
    assert result.shape == expected.shape
    np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("k", [2, 3, 7])
def test_fedavg_equal_weights_is_plain_mean(k: int) -> None:
    deltas = list(np.random.default_rng(k).standard_normal((k, 50)).astype(np.float32))
    expected = np.mean(np.stack(deltas).astype(np.float64), axis=0)
    np.testing.assert_allclose(fedavg(deltas, [5] * k), expected, rtol=1e-6, atol=1e-7)


def test_fedavg_is_weighted_mean_in_float64() -> None:
    rng = np.random.default_rng(0)
    deltas = list(rng.standard_normal((4, 30)).astype(np.float32))
    weights = [3, 17, 1, 40]
    w = np.asarray(weights, np.float64)
    expected = (w[:, None] * np.stack(deltas).astype(np.float64)).sum(0) / w.sum()
    np.testing.assert_allclose(fedavg(deltas, weights), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [2.0, 0.25, 1024.0])
def test_fedavg_weights_scale_invariant_exact_for_powers_of_two(scale: float) -> None:
    rng = np.random.default_rng(1)
    deltas = list(rng.standard_normal((3, 20)).astype(np.float32))
    weights = [1.0, 5.0, 11.0]
    a = fedavg(deltas, weights)
    b = fedavg(deltas, [w * scale for w in weights])
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("scale", [3.0, 0.1, 1e6])
def test_fedavg_weights_scale_invariant(scale: float) -> None:
    rng = np.random.default_rng(2)
    deltas = list(rng.standard_normal((3, 20)).astype(np.float32))
    weights = [1.0, 5.0, 11.0]
    np.testing.assert_allclose(
        fedavg(deltas, weights), fedavg(deltas, [w * scale for w in weights]), rtol=1e-6
    )


@pytest.mark.parametrize("weight", [1, 0.001, 1e9])
def test_fedavg_single_update_returns_itself(weight: float) -> None:
    delta = np.random.default_rng(4).standard_normal(33).astype(np.float32)
    result = fedavg([delta], [weight])
    assert result.tobytes() == delta.tobytes()
    assert result is not delta


def test_fedavg_does_not_modify_inputs() -> None:
    deltas = [f32(1, 2), f32(3, 4)]
    copies = [d.copy() for d in deltas]
    fedavg(deltas, [1, 3])
    for d, c in zip(deltas, copies, strict=True):
        assert d.tobytes() == c.tobytes()


@pytest.mark.parametrize(
    ("deltas", "weights", "match"),
    [
        ([], [], "no client update"),
        ([f32(1, 2), f32(1, 2, 3)], [1, 1], "shape"),
        ([f32(1, 2), np.zeros((2, 1), np.float32)], [1, 1], "shape"),
        ([f32(1, 2), f32(3, 4)], [1], "weights"),
        ([f32(1, 2)], [1, 2], "weights"),
        ([f32(1, 2), f32(3, 4)], [1, -1], "weights"),
        ([f32(1, 2), f32(3, 4)], [0, 0], "weights"),
        ([f32(1, 2), f32(3, 4)], [1, float("nan")], "weights"),
        ([f32(1, 2), f32(3, 4)], [1, float("inf")], "weights"),
        ([f32(1, 2)], [0], "weights"),
    ],
)
def test_fedavg_errors(deltas, weights, match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        fedavg(deltas, weights)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    k=st.integers(1, 6),
    p=st.integers(1, 8),
)
def test_fedavg_within_coordinatewise_range(data, k: int, p: int) -> None:
    elements = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
    deltas = [data.draw(hnp.arrays(np.float32, (p,), elements=elements)) for _ in range(k)]
    weights = data.draw(st.lists(st.floats(1e-3, 1e6, allow_nan=False), min_size=k, max_size=k))
    result = fedavg(deltas, weights)
    stacked = np.stack(deltas)
    assert result.dtype == np.float32
    assert np.all(result >= stacked.min(axis=0))
    assert np.all(result <= stacked.max(axis=0))


# --------------------------------------------------------------------------- apply_update


@pytest.mark.parametrize(
    ("weights", "delta", "lr", "expected"),
    [
        (f32(1, 2), f32(0.5, -1), 1.0, f32(1.5, 1)),
        (f32(1, 2), f32(0.5, -1), 2.0, f32(2, 0)),
        (f32(1, 2), f32(0.5, -1), 0.5, f32(1.25, 1.5)),
        (f32(0, 0, 0), f32(1, 2, 3), 1.0, f32(1, 2, 3)),
    ],
)
def test_apply_update(weights, delta, lr, expected) -> None:
    result = apply_update(weights, delta, lr)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)
    assert weights is not result


def test_apply_update_default_server_lr_is_one() -> None:
    np.testing.assert_array_equal(apply_update(f32(1, 1), f32(2, 3)), f32(3, 4))


def test_apply_update_shape_mismatch() -> None:
    with pytest.raises(TrainingError, match="shape"):
        apply_update(f32(1, 2), f32(1, 2, 3))


# --------------------------------------------------------------------------- aggregate_updates


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(("server_lr", "expected"), [(1.0, f32(3.5, 4.5)), (0.5, f32(2.25, 2.75))])
def test_aggregate_updates_known_values(rule: str, server_lr: float, expected) -> None:
    weights = f32(1, 1)
    updates = [update(1, f32(1, 2), num_samples=1), update(0, f32(3, 4), num_samples=3)]
    result = aggregate_updates(weights, updates, rule=rule, server_lr=server_lr)
    np.testing.assert_array_equal(result, expected)


def test_aggregate_updates_unknown_rule() -> None:
    with pytest.raises(TrainingError, match="unknown aggregation rule 'median'"):
        aggregate_updates(f32(0), [update(0, f32(1))], rule="median")


def test_aggregate_updates_no_updates() -> None:
    with pytest.raises(TrainingError, match="no client update"):
        aggregate_updates(f32(0, 0), [])


def test_aggregate_updates_all_zero_samples() -> None:
    with pytest.raises(TrainingError):
        aggregate_updates(f32(0), [update(0, f32(1), 0), update(1, f32(2), 0)])


# Values whose float sum depends on the order: 1e20 + 1/3 - 1e20 is 0 in one
# order and 1/3 in another, in float64 as in float32.
ORDER_SENSITIVE = [f32(1e20, 1.0), f32(1.0, -3e7), f32(-1e20, 3e7), f32(0.5, 1.0)]


def test_order_sensitive_values_really_are_order_sensitive() -> None:
    """Guard: without sorting, fedavg's result depends on the arrival order."""
    results = {
        fedavg([ORDER_SENSITIVE[i] for i in perm], [1] * 4).tobytes()
        for perm in itertools.permutations(range(4))
    }
    assert len(results) > 1


def test_aggregate_updates_independent_of_arrival_order() -> None:
    weights = f32(0.25, -0.5)
    updates = [update(cid, d, num_samples=1) for cid, d in enumerate(ORDER_SENSITIVE)]
    expected = aggregate_updates(weights, updates)
    # sorted by client id: the same bytes as aggregating in client-id order by hand
    by_hand = apply_update(weights, fedavg(ORDER_SENSITIVE, [1] * 4))
    assert expected.tobytes() == by_hand.tobytes()
    for perm in itertools.permutations(updates):
        assert aggregate_updates(weights, list(perm)).tobytes() == expected.tobytes()


@settings(max_examples=50, deadline=None)
@given(
    perm=st.permutations(range(6)),
    seed=st.integers(0, 2**32 - 1),
)
def test_aggregate_updates_permutation_property(perm: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    # magnitudes spanning many orders, so summation order matters
    deltas = (rng.standard_normal((6, 16)) * 10.0 ** rng.integers(-8, 9, (6, 16))).astype(
        np.float32
    )
    counts = rng.integers(1, 100, 6)
    updates = [update(cid, deltas[cid], int(counts[cid])) for cid in range(6)]
    weights = rng.standard_normal(16).astype(np.float32)
    expected = aggregate_updates(weights, updates)
    shuffled = [updates[i] for i in perm]
    assert aggregate_updates(weights, shuffled).tobytes() == expected.tobytes()
