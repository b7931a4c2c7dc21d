"""Tests for federated.aggregate: FedAvg, the robust and hybrid rules, clipping, the config,
the server step and order-independent aggregation (server optimizers: test_server_optimizers.py)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import ValidationError

from federated.aggregate import (
    RULES,
    AggregationConfig,
    Aggregator,
    ServerOptimizer,
    aggregate_updates,
    apply_update,
    clip_by_norm,
    combine,
    coordinate_median,
    fedavg,
    hybrid_aggregate,
    hybrid_weights,
    krum,
    krum_scores,
    krum_select,
    multi_krum,
    snr_shrink,
    trimmed_mean,
)
from federated.messages import ClientUpdate
from qfl.errors import TrainingError


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def update(
    client_id: int, delta: np.ndarray, num_samples: int = 1, noise_variance: float = 0.0
) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id,
        round=0,
        num_samples=num_samples,
        loss=0.0,
        delta=delta,
        seconds=0.0,
        path="quantum" if noise_variance > 0 else "classical",
        noise_variance=noise_variance,
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


@pytest.mark.parametrize("rule", ["fedavg", "fedprox", "hybrid"])
@pytest.mark.parametrize(("server_lr", "expected"), [(1.0, f32(3.5, 4.5)), (0.5, f32(2.25, 2.75))])
def test_aggregate_updates_known_values(rule: str, server_lr: float, expected) -> None:
    weights = f32(1, 1)
    updates = [update(1, f32(1, 2), num_samples=1), update(0, f32(3, 4), num_samples=3)]
    result = aggregate_updates(weights, updates, rule=rule, server_lr=server_lr)
    np.testing.assert_array_equal(result, expected)


def test_aggregate_updates_unknown_rule() -> None:
    with pytest.raises(TrainingError, match="unknown aggregation rule 'mean'"):
        aggregate_updates(f32(0), [update(0, f32(1))], rule="mean")


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


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_is_independent_of_arrival_order(rule: str) -> None:
    rng = np.random.default_rng(7)
    deltas = rng.standard_normal((7, 12)).astype(np.float32)
    updates = [update(cid, deltas[cid], int(n)) for cid, n in enumerate(rng.integers(1, 9, 7))]
    config = AggregationConfig(rule=rule, byzantine=1, clip_norm=3.0)
    expected = aggregate_updates(f32(*[0] * 12), updates, config=config)
    for perm in ([6, 5, 4, 3, 2, 1, 0], [3, 0, 6, 1, 5, 2, 4]):
        shuffled = [updates[i] for i in perm]
        assert aggregate_updates(f32(*[0] * 12), shuffled, config=config).tobytes() == (
            expected.tobytes()
        )


# --------------------------------------------------------------------------- config


def test_config_defaults_are_plain_fedavg() -> None:
    config = AggregationConfig()
    assert (config.rule, config.server_optimizer, config.server_lr) == ("fedavg", "none", 1.0)
    assert config.clip_norm is None
    assert not config.robust
    assert config.min_updates == 1


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"rule": "mean"}, "rule"),
        ({"server_optimizer": "adam"}, "server_optimizer"),
        ({"server_lr": 0.0}, "server_lr"),
        ({"beta1": 1.0}, "beta1"),
        ({"beta2": -0.1}, "beta2"),
        ({"tau": 0.0}, "tau"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"trim_fraction": -0.1}, "trim_fraction"),
        ({"byzantine": -1}, "byzantine"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"hybrid_eps": 0.0}, "hybrid_eps"),
        ({"rule": "krum", "multi_krum_m": 3}, "multi_krum_m is set but rule is 'krum'"),
        ({"multi_krum_m": 0, "rule": "multi_krum"}, "multi_krum_m"),
        ({"unknown": 1}, "unknown"),
    ],
)
def test_config_rejects_bad_values(fields: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        AggregationConfig(**fields)


def test_config_is_frozen() -> None:
    config = AggregationConfig()
    with pytest.raises(ValidationError):
        config.rule = "median"


@pytest.mark.parametrize(
    ("fields", "minimum", "robust"),
    [
        ({"rule": "krum", "byzantine": 0}, 3, True),
        ({"rule": "krum", "byzantine": 2}, 7, True),
        ({"rule": "multi_krum", "byzantine": 1}, 5, True),
        ({"rule": "multi_krum", "byzantine": 1, "multi_krum_m": 9}, 9, True),
        ({"rule": "median"}, 1, True),
        ({"rule": "trimmed_mean"}, 1, True),
        ({"rule": "hybrid"}, 1, False),
        ({"rule": "fedprox"}, 1, False),
    ],
)
def test_config_min_updates_and_robust(fields: dict, minimum: int, robust: bool) -> None:
    config = AggregationConfig(**fields)
    assert config.min_updates == minimum
    assert config.robust is robust


# --------------------------------------------------------------------------- clipping


def test_clip_scales_to_norm_c_exactly() -> None:
    np.testing.assert_array_equal(clip_by_norm(f32(3, 4), 2.5), f32(1.5, 2.0))
    np.testing.assert_array_equal(clip_by_norm(f32(0, -8, 6), 5.0), f32(0, -4, 3))


@pytest.mark.parametrize("c", [0.01, 1.0, 7.5])
def test_clip_norm_of_long_vector_is_c(c: float) -> None:
    delta = (np.random.default_rng(3).standard_normal(1000) * 10).astype(np.float32)
    clipped = clip_by_norm(delta, c)
    assert np.linalg.norm(clipped.astype(np.float64)) == pytest.approx(c, rel=1e-6)
    direction = delta / np.linalg.norm(delta)
    np.testing.assert_allclose(clipped / np.linalg.norm(clipped), direction, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("delta", [f32(3, 4), f32(0.1, -0.2), f32(0, 0)])
def test_clip_leaves_short_updates_unchanged(delta) -> None:
    out = clip_by_norm(delta, 5.0)
    assert out.tobytes() == delta.tobytes()
    assert out is not delta


def test_clip_applies_before_the_rule() -> None:
    updates = [update(0, f32(30, 40)), update(1, f32(1, 0))]
    config = AggregationConfig(clip_norm=5.0)
    delta, info = combine(updates, config)
    np.testing.assert_array_equal(delta, f32(2, 2))  # mean of (3, 4) and (1, 0)
    assert info.clipped == (0,)


# --------------------------------------------------------------------------- median, trimmed mean


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([f32(1), f32(2), f32(100)], f32(2)),
        ([f32(1, 100), f32(2, -5), f32(100, 3)], f32(2, 3)),
        ([f32(1), f32(2), f32(3), f32(100)], f32(2.5)),
        ([f32(-7, 0)], f32(-7, 0)),
    ],
)
def test_median_known_values(deltas, expected) -> None:
    np.testing.assert_array_equal(coordinate_median(deltas), expected)


@pytest.mark.parametrize(
    ("deltas", "fraction", "expected"),
    [
        ([f32(1), f32(2), f32(3), f32(4), f32(100)], 0.2, f32(3)),
        ([f32(1), f32(2), f32(3), f32(4), f32(100)], 0.0, f32(22)),
        ([f32(1), f32(2), f32(3), f32(4), f32(100)], 0.4, f32(3)),
        ([f32(-50, 1), f32(2, 2), f32(4, 3), f32(6, 400)], 0.25, f32(3, 2.5)),
        ([f32(-50, 1), f32(2, 2), f32(4, 3), f32(6, 400)], 0.2, f32(-9.5, 101.5)),  # b = 0
    ],
)
def test_trimmed_mean_known_values(deltas, fraction, expected) -> None:
    np.testing.assert_array_equal(trimmed_mean(deltas, fraction), expected)


@pytest.mark.parametrize("fraction", [0.5, -0.01])
def test_trimmed_mean_bad_fraction(fraction: float) -> None:
    with pytest.raises(TrainingError, match="trim fraction"):
        trimmed_mean([f32(1)], fraction)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "multi_krum"])
def test_robust_rules_ignore_claimed_sample_counts(rule: str) -> None:
    deltas = [f32(1, 1), f32(1.1, 0.9), f32(0.9, 1.2), f32(50, -50), f32(1, 1.05)]
    config = AggregationConfig(rule=rule, trim_fraction=0.2)
    honest = aggregate_updates(
        f32(0, 0), [update(i, d) for i, d in enumerate(deltas)], config=config
    )
    boasting = [update(i, d, 10**6 if i == 3 else 1) for i, d in enumerate(deltas)]
    result = aggregate_updates(f32(0, 0), boasting, config=config)
    assert result.tobytes() == honest.tobytes()
    assert np.all(np.abs(result - 1) < 0.2)


# --------------------------------------------------------------------------- krum


KRUM_1D = [f32(0), f32(1), f32(2), f32(10), f32(11)]


def test_krum_scores_known_values() -> None:
    # K = 5, f = 1: each update's 2 nearest squared distances
    np.testing.assert_array_equal(krum_scores(KRUM_1D, 1), [5.0, 2.0, 5.0, 65.0, 82.0])
    # f = 0: 3 nearest
    np.testing.assert_array_equal(krum_scores(KRUM_1D, 0), [105.0, 83.0, 69.0, 146.0, 182.0])


def test_krum_picks_the_honest_cluster() -> None:
    rng = np.random.default_rng(0)
    honest = [(np.ones(20) + 0.1 * rng.standard_normal(20)).astype(np.float32) for _ in range(7)]
    byzantine = [np.full(20, -30.0, np.float32), np.full(20, 40.0, np.float32)]
    deltas = byzantine + honest
    chosen = krum(deltas, 2)
    assert any(chosen.tobytes() == h.tobytes() for h in honest)
    np.testing.assert_array_equal(krum(KRUM_1D, 1), f32(1))
    assert sorted(krum_select(deltas, 2, 7).tolist()) == list(range(2, 9))


def test_multi_krum_averages_the_m_best() -> None:
    np.testing.assert_array_equal(multi_krum(KRUM_1D, 1, 3), f32(1))  # mean of 0, 1, 2
    np.testing.assert_array_equal(multi_krum(KRUM_1D, 1), f32(3.25))  # m = K - f = 4
    np.testing.assert_array_equal(multi_krum(KRUM_1D, 1, 5), f32(4.8))  # everything


def test_krum_ties_break_by_client_order() -> None:
    deltas = [f32(5), f32(0), f32(0), f32(0), f32(5)]
    assert krum_select(deltas, 1, 1).tolist() == [1]


@pytest.mark.parametrize(("k", "f"), [(6, 2), (4, 1), (2, 0)])
def test_krum_needs_more_than_2f_plus_2_updates(k: int, f: int) -> None:
    with pytest.raises(TrainingError, match=f"needs more than 2f \\+ 2 = {2 * f + 2} updates"):
        krum([f32(i) for i in range(k)], f)
    config = AggregationConfig(rule="krum", byzantine=f)
    with pytest.raises(TrainingError, match="2f \\+ 2"):
        aggregate_updates(f32(0), [update(i, f32(i)) for i in range(k)], config=config)


@pytest.mark.parametrize("m", [0, 6])
def test_multi_krum_m_out_of_range(m: int) -> None:
    with pytest.raises(TrainingError, match="multi-krum m"):
        multi_krum(KRUM_1D, 1, m)


def test_combine_reports_krum_selection_by_client_id() -> None:
    updates = [update(10 + i, d) for i, d in enumerate(KRUM_1D)]
    delta, info = combine(updates, AggregationConfig(rule="multi_krum", multi_krum_m=3))
    np.testing.assert_array_equal(delta, f32(1))
    assert info.selected == (10, 11, 12)
    assert info.weights == pytest.approx((1 / 3, 1 / 3, 1 / 3, 0.0, 0.0))
    assert info.metrics()["agg_selected"] == 3.0


# --------------------------------------------------------------------------- hybrid (Eq. 6-7)


def test_hybrid_weights_known_values() -> None:
    # a_k = n_k r_k / (sigma_k^2 + eps) = 1e6, 5e5, 2.5e5 -> 4/7, 2/7, 1/7
    alpha = hybrid_weights([100, 100, 50], [1.0, 0.5, 1.0], [0.0, 0.0, 1e-4], eps=1e-4)
    np.testing.assert_allclose(alpha, [4 / 7, 2 / 7, 1 / 7], rtol=1e-12)
    assert alpha.sum() == pytest.approx(1.0, abs=1e-15)


def test_hybrid_weights_inverse_variance() -> None:
    alpha = hybrid_weights([1, 1, 1], [1, 1, 1], [0.0, 0.9, 9.9], eps=0.1)
    np.testing.assert_allclose(alpha, np.array([10, 1, 0.1]) / 11.1, rtol=1e-12)


@pytest.mark.parametrize(
    ("n", "r", "s2", "match"),
    [
        ([1, 1], [1.0, 1.5], [0, 0], "reliabilities"),
        ([1, 1], [1.0, -0.1], [0, 0], "reliabilities"),
        ([1, 1], [1.0, float("nan")], [0, 0], "reliabilities"),
        ([1, 1], [1.0, 1.0], [0, -1e-3], "noise variances"),
        ([1, 1], [0.0, 0.0], [0, 0], "all 0"),
        ([0, 0], [1.0, 1.0], [0, 0], "all 0"),
        ([1, 1], [1.0], [0, 0], "hybrid weights"),
    ],
)
def test_hybrid_weights_errors(n, r, s2, match: str) -> None:
    with pytest.raises(TrainingError, match=match):
        hybrid_weights(n, r, s2, eps=1e-4)


MASK = np.array([False, True, True])


def test_snr_shrink_known_values() -> None:
    # quantum entries (3, 4): p = 12.5, sigma^2 = 2.5 -> lambda = 1 - 2.5 / 12.5 = 0.8
    out, gain = snr_shrink(f32(7, 3, 4), 2.5, MASK)
    assert gain == pytest.approx(0.8, abs=1e-15)
    np.testing.assert_array_equal(out, f32(7, 2.4, 3.2))


@pytest.mark.parametrize(("s2", "gain"), [(0.0, 1.0), (12.5, 0.0), (100.0, 0.0), (6.25, 0.5)])
def test_snr_shrink_limits(s2: float, gain: float) -> None:
    out, got = snr_shrink(f32(7, 3, 4), s2, MASK)
    assert got == gain
    np.testing.assert_array_equal(out, f32(7, 3 * gain, 4 * gain))


def test_snr_shrink_no_quantum_entries_is_identity() -> None:
    out, gain = snr_shrink(f32(7, 3, 4), 5.0, np.zeros(3, bool))
    assert gain == 1.0
    np.testing.assert_array_equal(out, f32(7, 3, 4))


def test_snr_shrink_mask_shape() -> None:
    with pytest.raises(TrainingError, match="mask shape"):
        snr_shrink(f32(1, 2), 1.0, MASK)


def test_snr_shrink_lowers_error_of_noisy_quantum_deltas() -> None:
    """Each client sees the true quantum delta g plus N(0, sigma^2); shrinking cuts the MSE."""
    rng = np.random.default_rng(11)
    mask = np.ones(16, bool)
    g = (0.3 * rng.standard_normal(16)).astype(np.float32)  # signal power ~ 0.09
    raw_err, shrunk_err = 0.0, 0.0
    for _ in range(200):
        noisy = (g + rng.normal(0.0, 0.5, 16)).astype(np.float32)  # sigma^2 = 0.25
        shrunk, gain = snr_shrink(noisy, 0.25, mask)
        assert 0.0 <= gain < 1.0
        raw_err += float(np.sum((noisy - g) ** 2))
        shrunk_err += float(np.sum((shrunk - g) ** 2))
    assert shrunk_err < 0.6 * raw_err


def test_hybrid_aggregate_known_values() -> None:
    # classical (1, 1, 1), n=3, sigma^2=0; quantum (0, 3, 4), n=1, sigma^2=2.5 -> (0, 2.4, 3.2)
    # alpha = (3 / 1e-1, 1 / 2.6) normalised
    delta, alpha, gains = hybrid_aggregate(
        [f32(1, 1, 1), f32(0, 3, 4)], [3, 1], [1.0, 1.0], [0.0, 2.5], MASK, eps=0.1
    )
    a = np.array([30.0, 1 / 2.6]) / (30.0 + 1 / 2.6)
    np.testing.assert_allclose(alpha, a, rtol=1e-12)
    np.testing.assert_allclose(gains, [1.0, 0.8], rtol=1e-12)
    expected = a[0] * np.array([1, 1, 1]) + a[1] * np.array([0, 2.4, 3.2])
    np.testing.assert_allclose(delta, expected, rtol=1e-6)


def test_hybrid_without_noise_is_fedavg() -> None:
    rng = np.random.default_rng(5)
    deltas = list(rng.standard_normal((4, 9)).astype(np.float32))
    delta, alpha, _ = hybrid_aggregate(deltas, [3, 1, 7, 2], [1] * 4, [0] * 4, None, eps=1e-4)
    np.testing.assert_allclose(alpha, np.array([3, 1, 7, 2]) / 13, rtol=1e-12)
    np.testing.assert_allclose(delta, fedavg(deltas, [3, 1, 7, 2]), rtol=1e-6, atol=1e-7)


def test_hybrid_reliability_from_the_scheduler() -> None:
    updates = [update(0, f32(0, 0, 0), 1), update(1, f32(4, 4, 4), 1), update(2, f32(8, 0, 0), 2)]
    config = AggregationConfig(rule="hybrid")
    delta, info = combine(updates, config, reliability={1: 0.5, 2: 0.25})  # client 0 -> 1.0
    # a = (1, 0.5, 0.5) / eps -> alpha = (0.5, 0.25, 0.25)
    assert info.weights == pytest.approx((0.5, 0.25, 0.25), rel=1e-12)
    np.testing.assert_allclose(delta, f32(3, 1, 1), rtol=1e-6)


def test_hybrid_needs_the_mask_for_noisy_updates() -> None:
    updates = [update(0, f32(1, 1, 1)), update(1, f32(0, 3, 4), noise_variance=1.0)]
    with pytest.raises(TrainingError, match="quantum parameter mask"):
        combine(updates, AggregationConfig(rule="hybrid"))
    # without shrinking the mask is not needed
    combine(updates, AggregationConfig(rule="hybrid", snr_shrink=False))


def test_hybrid_in_combine_shrinks_quantum_entries_only() -> None:
    updates = [update(0, f32(7, 3, 4), noise_variance=2.5)]
    delta, info = combine(updates, AggregationConfig(rule="hybrid"), quantum_mask=MASK)
    np.testing.assert_array_equal(delta, f32(7, 2.4, 3.2))
    assert info.shrink == pytest.approx((0.8,))
    assert info.metrics()["agg_min_shrink"] == pytest.approx(0.8)


def test_hybrid_downweights_a_very_noisy_quantum_update() -> None:
    clean = [update(k, f32(1, 1, 1), 10) for k in range(3)]
    noisy = update(3, f32(-50, 80, -90), 10, noise_variance=1e3)
    delta, info = combine([*clean, noisy], AggregationConfig(rule="hybrid"), quantum_mask=MASK)
    assert info.weights[3] < 1e-6
    np.testing.assert_allclose(delta, f32(1, 1, 1), atol=1e-4)
    plain, _ = combine([*clean, noisy], AggregationConfig())
    assert np.abs(plain - 1).max() > 10


# --------------------------------------------------------------------------- Aggregator


def test_stateless_call_refuses_an_adaptive_optimizer() -> None:
    config = AggregationConfig(server_optimizer="fedadam", server_lr=0.1)
    with pytest.raises(TrainingError, match="keeps state across rounds"):
        aggregate_updates(f32(0), [update(0, f32(1))], config=config)
    out = aggregate_updates(
        f32(0), [update(0, f32(1))], config=config, optimizer=ServerOptimizer(config)
    )
    assert out[0] > 0


def test_config_overrides_rule_and_server_lr() -> None:
    updates = [update(i, f32(v)) for i, v in enumerate([1, 2, 100])]
    config = AggregationConfig(rule="median", server_lr=0.5)
    np.testing.assert_array_equal(aggregate_updates(f32(1), updates, config=config), f32(2))


def test_aggregator_steps_and_reports() -> None:
    aggregator = Aggregator(AggregationConfig(rule="median"))
    updates = [update(i, f32(v, -v)) for i, v in enumerate([1, 2, 100])]
    weights, info = aggregator.step(f32(10, 10), updates)
    np.testing.assert_array_equal(weights, f32(12, 8))
    assert info.rule == "median"
    assert info.clients == (0, 1, 2)
    assert info.weights is None
    assert info.update_norm == pytest.approx(np.sqrt(8))


def test_aggregator_mask_must_match_weights() -> None:
    aggregator = Aggregator(AggregationConfig(rule="hybrid"), quantum_mask=MASK)
    with pytest.raises(TrainingError, match="quantum mask shape"):
        aggregator.step(f32(0, 0), [update(0, f32(1, 1))])


# --------------------------------------------------------------------------- the mask Eq. 7 needs


def test_quantum_param_mask_marks_only_circuit_angles() -> None:
    from federated.config import ModelConfig
    from federated.models import build_model, get_flat, quantum_param_mask, set_flat
    from quantum.config import QuantumConfig

    quantum = QuantumConfig(qubits=3, layers=2, shots=None)
    mlp = build_model(ModelConfig(hidden=(5,)), (4,), 3, seed=0)
    assert quantum_param_mask(mlp).shape == get_flat(mlp).shape
    assert not quantum_param_mask(mlp).any()
    for kind, features in (("hybrid", 4), ("vqc", 3)):
        model = build_model(
            ModelConfig(kind=kind, hidden=(5,)), (features,), 3, seed=0, quantum=quantum
        )
        mask = quantum_param_mask(model)
        flat = get_flat(model)
        assert mask.shape == flat.shape and mask.sum() == 6  # 3 qubits x 2 layers
        marked = flat.copy()
        marked[mask] = 123.0
        set_flat(model, marked)
        np.testing.assert_array_equal(model.quantum.theta.detach().numpy(), np.full(6, 123.0))
        others = [p for n, p in model.named_parameters() if not n.startswith("quantum.")]
        assert all(not np.any(p.detach().numpy() == 123.0) for p in others)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_updates_are_dropped_and_reported(rule: str, bad: float) -> None:
    updates = [update(k, f32(1, 2)) for k in range(5)] + [update(9, f32(bad, 0))]
    delta, info = combine(updates, AggregationConfig(rule=rule, byzantine=0))
    np.testing.assert_array_equal(delta, f32(1, 2))
    assert info.dropped == (9,)
    assert info.clients == (0, 1, 2, 3, 4)
    assert info.metrics()["agg_dropped"] == 1.0


def test_only_non_finite_updates_is_an_error() -> None:
    with pytest.raises(TrainingError, match=r"no client update to aggregate \(non-finite: \[3\]\)"):
        combine([update(3, f32(float("nan")))], AggregationConfig())


def test_fedavg_averages_each_entry_over_the_clients_that_trained_it():
    """Heterogeneous depth: a client that trained fewer layers sends no delta for the rest."""
    from federated.aggregate import AggregationConfig, combine
    from federated.messages import ClientUpdate

    deep = ClientUpdate(
        client_id=0, round=0, num_samples=30, loss=0.0, seconds=0.0,
        delta=np.array([1.0, 1.0, 4.0, 4.0], np.float32),
    )  # fmt: skip
    shallow = ClientUpdate(
        client_id=1, round=0, num_samples=10, loss=0.0, seconds=0.0,
        delta=np.array([5.0, 5.0, 0.0, 0.0], np.float32),
        trained=np.array([True, True, False, False]),
    )  # fmt: skip
    delta, _ = combine([deep, shallow], AggregationConfig())
    # entries 0-1: (30 * 1 + 10 * 5) / 40 = 2; entries 2-3: only the deep client's 4
    np.testing.assert_allclose(delta, [2.0, 2.0, 4.0, 4.0])
