"""Tests for federated.crosscheck: the classical cross-check of a quantum update."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from federated.crosscheck import CrossCheckConfig, cosine_similarity, cross_check

REF = np.array([1.0, -2.0, 0.5, 0.0])
DEFAULT = CrossCheckConfig()


@pytest.mark.parametrize(
    ("a", "b", "cos"),
    [
        ([1.0, 0.0], [1.0, 1.0], 1 / math.sqrt(2)),
        ([1.0, 2.0], [2.0, 4.0], 1.0),
        ([1.0, 2.0], [-1.0, -2.0], -1.0),
        ([1.0, 0.0], [0.0, 3.0], 0.0),
        ([0.0, 0.0], [0.0, 0.0], 1.0),
        ([0.0, 0.0], [1.0, 0.0], 0.0),
    ],
)
def test_cosine_similarity(a, b, cos) -> None:
    assert cosine_similarity(np.array(a), np.array(b)) == pytest.approx(cos)


def test_cosine_needs_equal_sizes() -> None:
    with pytest.raises(ValueError, match="3 and 2 entries"):
        cosine_similarity(np.ones(3), np.ones(2))


def test_an_aligned_update_passes() -> None:
    result = cross_check(0.1 * REF, DEFAULT, reference=REF, probe_loss=0.9, baseline_loss=1.0)
    assert not result.suspect
    assert result.reasons == () and result.reason is None
    assert result.cosine == pytest.approx(1.0)
    assert result.loss_increase == pytest.approx(-0.1)
    assert result.norm_ratio is None  # off by default


def test_an_opposite_update_is_suspect() -> None:
    result = cross_check(-REF, DEFAULT, reference=REF)
    assert result.suspect
    assert result.reason == "direction: cosine -1.000 < 0.0"


@pytest.mark.parametrize(("min_cosine", "suspect"), [(0.0, False), (0.1, True), (-0.5, False)])
def test_orthogonal_update_against_the_threshold(min_cosine: float, suspect: bool) -> None:
    orthogonal = np.array([2.0, 1.0, 0.0, 7.0])  # REF . orthogonal = 0
    result = cross_check(orthogonal, CrossCheckConfig(min_cosine=min_cosine), reference=REF)
    assert result.cosine == pytest.approx(0.0)
    assert result.suspect is suspect


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_update_is_suspect(bad: float) -> None:
    candidate = REF.copy()
    candidate[2] = bad
    result = cross_check(candidate, DEFAULT)
    assert result.suspect
    assert result.reasons == ("non-finite entries in the update",)


@pytest.mark.parametrize(
    ("scale", "suspect"), [(5.0, False), (0.2, False), (100.0, True), (0.01, True)]
)
def test_norm_ratio(scale: float, suspect: bool) -> None:
    config = CrossCheckConfig(max_norm_ratio=10.0)
    result = cross_check(scale * REF, config, reference=REF)
    assert result.norm_ratio == pytest.approx(scale)
    assert result.suspect is suspect
    if suspect:
        assert result.reason.startswith("size: norm ratio")


def test_norm_ratio_against_a_zero_reference() -> None:
    config = CrossCheckConfig(max_norm_ratio=10.0)
    assert not cross_check(np.zeros(4), config, reference=np.zeros(4)).suspect
    result = cross_check(REF, config, reference=np.zeros(4))
    assert result.suspect and result.norm_ratio == math.inf


@pytest.mark.parametrize(
    ("probe", "base", "suspect"),
    [
        (1.05, 1.0, False),
        (1.0999, 1.0, False),  # just under the limit
        (1.1001, 1.0, True),  # just over it
        (1.2, 1.0, True),
        (0.09, 0.01, False),  # below 1 the limit is absolute: 0.1 x max(0.01, 1)
        (0.2, 0.01, True),
        (25.0, 20.0, True),  # 5 > 0.1 x 20
        (21.0, 20.0, False),
    ],
)
def test_probe_loss(probe: float, base: float, suspect: bool) -> None:
    result = cross_check(REF, DEFAULT, probe_loss=probe, baseline_loss=base)
    assert result.suspect is suspect
    assert result.loss_increase == pytest.approx(probe - base)
    assert result.cosine is None


def test_non_finite_probe_loss_is_suspect() -> None:
    result = cross_check(REF, DEFAULT, probe_loss=math.nan, baseline_loss=1.0)
    assert result.suspect and "probe loss not finite" in result.reason


def test_probe_loss_check_can_be_off() -> None:
    config = CrossCheckConfig(max_loss_increase=None)
    assert not cross_check(REF, config, probe_loss=100.0, baseline_loss=1.0).suspect


def test_every_failed_check_is_reported() -> None:
    config = CrossCheckConfig(min_cosine=0.5, max_norm_ratio=2.0)
    result = cross_check(-10 * REF, config, reference=REF, probe_loss=3.0, baseline_loss=1.0)
    assert len(result.reasons) == 3
    assert [r.split(":")[0] for r in result.reasons[:2]] == ["direction", "size"]
    assert result.reasons[2].startswith("probe loss 3")


def test_inputs_must_come_in_pairs_and_be_finite() -> None:
    with pytest.raises(ValueError, match="both probe_loss and baseline_loss"):
        cross_check(REF, DEFAULT, probe_loss=1.0)
    with pytest.raises(ValueError, match="reference has non-finite"):
        cross_check(REF, DEFAULT, reference=np.array([1.0, math.nan, 0.0, 0.0]))


def test_no_inputs_no_suspicion() -> None:
    result = cross_check(REF, DEFAULT)
    assert not result.suspect
    assert (result.cosine, result.norm_ratio, result.loss_increase) == (None, None, None)


@pytest.mark.parametrize(
    "fields", [{"min_cosine": 1.5}, {"max_norm_ratio": 0.5}, {"max_loss_increase": -1}, {"x": 1}]
)
def test_bad_configs(fields) -> None:
    with pytest.raises(ValidationError):
        CrossCheckConfig(**fields)


def test_a_noisy_update_from_a_real_gradient() -> None:
    """A delta near -lr * grad passes; a sign-flipped or random one is caught."""
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(200)
    config = CrossCheckConfig(min_cosine=0.5)
    noisy = -0.1 * grad + 0.02 * rng.standard_normal(200)  # shot noise, SNR ~ 5
    assert not cross_check(noisy, config, reference=-grad).suspect
    assert cross_check(-noisy, config, reference=-grad).suspect
    assert cross_check(rng.standard_normal(200), config, reference=-grad).suspect
