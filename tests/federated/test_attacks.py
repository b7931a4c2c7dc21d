"""Adversarial clients: who attacks (from the run seed) and what each kind of attacker sends."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from federated.attacks import (
    AttackConfig,
    attack_rng,
    corrupt_delta,
    flip_labels,
    num_attackers,
    poison_data,
    select_attackers,
)
from federated.data import ArrayDataset
from federated.sampling import client_seed
from qfl.errors import DataError

DELTA = np.array([1.0, -2.0, 0.5, 0.0], dtype=np.float32)


# --------------------------------------------------------------------------- config


def test_default_is_no_attack() -> None:
    config = AttackConfig()
    assert config.kind == "none" and config.fraction == 0.0
    assert not config.corrupts_update
    assert select_attackers(10, config, seed=0) == frozenset()


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"kind": "sign_flip"}, "needs fraction > 0"),
        ({"fraction": 0.2}, "needs a kind"),
        ({"kind": "scaled", "fraction": 0.2}, "scale 1"),
        ({"kind": "sign_flip", "fraction": 1.0}, "fraction"),
        ({"kind": "sign_flip", "fraction": -0.1}, "fraction"),
        ({"kind": "scaled", "fraction": 0.1, "scale": 0.0}, "scale"),
        ({"kind": "gaussian", "fraction": 0.1, "noise_std": 0.0}, "noise_std"),
        ({"kind": "backdoor", "fraction": 0.1}, "kind"),
        ({"kind": "sign_flip", "fraction": 0.1, "extra": 1}, "extra"),
    ],
)
def test_config_rejects_bad_values(fields: dict, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        AttackConfig(**fields)


@pytest.mark.parametrize(
    ("kind", "corrupts"),
    [("sign_flip", True), ("scaled", True), ("gaussian", True), ("label_flip", False)],
)
def test_corrupts_update(kind: str, corrupts: bool) -> None:
    assert AttackConfig(kind=kind, fraction=0.1, scale=2.0).corrupts_update is corrupts


# --------------------------------------------------------------------------- who attacks


@pytest.mark.parametrize(
    ("n", "fraction", "count"),
    [(10, 0.2, 2), (10, 0.3, 3), (7, 0.2, 1), (4, 0.2, 0), (100, 0.25, 25)],
)
def test_num_attackers_is_floor(n: int, fraction: float, count: int) -> None:
    assert num_attackers(n, fraction) == count
    config = AttackConfig(kind="sign_flip", fraction=fraction)
    chosen = select_attackers(n, config, seed=3)
    assert len(chosen) == count
    assert all(0 <= k < n for k in chosen)


def test_attackers_are_a_function_of_the_seed() -> None:
    config = AttackConfig(kind="sign_flip", fraction=0.2)
    assert select_attackers(50, config, seed=1) == select_attackers(50, config, seed=1)
    draws = {select_attackers(50, config, seed=s) for s in range(20)}
    assert len(draws) > 15  # different seeds, different attackers
    # the kind does not change who attacks, only how
    other = AttackConfig(kind="gaussian", fraction=0.2)
    assert select_attackers(50, other, seed=1) == select_attackers(50, config, seed=1)


def test_attackers_are_uniform_over_clients() -> None:
    config = AttackConfig(kind="sign_flip", fraction=0.2)
    counts = np.zeros(10)
    for s in range(2000):
        for k in select_attackers(10, config, seed=s):
            counts[k] += 1
    # each client attacks with probability 0.2: 400 of 2000 expected, sd ~ 18
    assert np.all(np.abs(counts - 400) < 90)


def test_select_attackers_needs_clients() -> None:
    with pytest.raises(DataError):
        select_attackers(0, AttackConfig(kind="sign_flip", fraction=0.5), seed=0)


# --------------------------------------------------------------------------- what they send


@pytest.mark.parametrize(
    ("kind", "scale", "expected"),
    [
        ("sign_flip", 1.0, [-1.0, 2.0, -0.5, 0.0]),
        ("sign_flip", 4.0, [-4.0, 8.0, -2.0, 0.0]),
        ("scaled", 10.0, [10.0, -20.0, 5.0, 0.0]),
        ("scaled", 0.5, [0.5, -1.0, 0.25, 0.0]),
        ("label_flip", 3.0, [1.0, -2.0, 0.5, 0.0]),
        ("none", 3.0, [1.0, -2.0, 0.5, 0.0]),
    ],
)
def test_corrupt_delta_known_values(kind: str, scale: float, expected) -> None:
    fraction = 0.0 if kind == "none" else 0.2
    config = AttackConfig(kind=kind, fraction=fraction, scale=scale)
    out = corrupt_delta(DELTA, config, np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array(expected, np.float32))
    assert out is not DELTA


def test_gaussian_replaces_the_update_with_noise() -> None:
    config = AttackConfig(kind="gaussian", fraction=0.2, noise_std=3.0)
    honest = np.full(20000, 100.0, np.float32)
    out = corrupt_delta(honest, config, np.random.default_rng(1))
    assert out.shape == honest.shape and out.dtype == np.float32
    assert abs(out.mean()) < 0.1  # no trace of the honest 100
    assert out.std() == pytest.approx(3.0, rel=0.03)
    # the same generator state gives the same bytes, whatever the honest update was
    again = corrupt_delta(np.zeros(20000, np.float32), config, np.random.default_rng(1))
    assert again.tobytes() == out.tobytes()


def test_attack_rng_is_per_task_seed_and_apart_from_training() -> None:
    seed = client_seed(7, 2, 3)
    a = attack_rng(seed).standard_normal(4)
    np.testing.assert_array_equal(a, attack_rng(seed).standard_normal(4))
    for other in (client_seed(7, 3, 3), client_seed(7, 2, 4), client_seed(8, 2, 3)):
        assert not np.array_equal(a, attack_rng(other).standard_normal(4))
    assert not np.array_equal(a, np.random.default_rng(seed).standard_normal(4))


# --------------------------------------------------------------------------- label flipping


def test_flip_labels_known_values() -> None:
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9, 4]), 10), [9, 8, 0, 5])
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 1]), 2), [1, 0, 0])
    assert flip_labels(np.array([2]), 3).dtype == np.int64


def test_flip_labels_is_an_involution_without_fixed_points_for_even_c() -> None:
    y = np.arange(10).repeat(3)
    flipped = flip_labels(y, 10)
    assert np.all(flipped != y)
    np.testing.assert_array_equal(flip_labels(flipped, 10), y)


@pytest.mark.parametrize(("y", "c"), [([0, 10], 10), ([-1], 3), ([0], 1)])
def test_flip_labels_errors(y, c: int) -> None:
    with pytest.raises(DataError):
        flip_labels(np.array(y), c)


def test_poison_data_flips_only_under_label_flip() -> None:
    data = ArrayDataset(np.ones((3, 2)), np.array([0, 1, 2]))
    flipped = poison_data(data, AttackConfig(kind="label_flip", fraction=0.1), 3)
    np.testing.assert_array_equal(flipped.y, [2, 1, 0])
    np.testing.assert_array_equal(flipped.x, data.x)
    np.testing.assert_array_equal(data.y, [0, 1, 2])  # input untouched
    same = poison_data(data, AttackConfig(kind="sign_flip", fraction=0.1), 3)
    assert same is data
