"""Tests for federated.sampling: client sampling and derived seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from federated.sampling import client_seed, derive_seed, round_rng, sample_clients


@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 3), (10, 9), (1000, 17), (2, 1)])
def test_sample_clients_distinct_sorted_in_range(n: int, k: int) -> None:
    ids = sample_clients(n, k, np.random.default_rng(0))
    assert len(ids) == k
    assert len(set(ids)) == k
    assert ids == sorted(ids)
    assert all(type(i) is int and 0 <= i < n for i in ids)


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 200), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_sample_clients_property(n: int, data, seed: int) -> None:
    k = data.draw(st.integers(1, n))
    a = sample_clients(n, k, np.random.default_rng(seed))
    b = sample_clients(n, k, np.random.default_rng(seed))
    assert a == b
    assert len(set(a)) == k
    assert a == sorted(a)
    assert a[0] >= 0
    assert a[-1] < n


@pytest.mark.parametrize("n", [1, 5, 64])
def test_sample_all_clients(n: int) -> None:
    assert sample_clients(n, n, np.random.default_rng(3)) == list(range(n))


def test_sample_clients_differs_across_rounds() -> None:
    draws = {tuple(sample_clients(100, 10, round_rng(0, t))) for t in range(20)}
    assert len(draws) == 20


def test_sample_clients_is_roughly_uniform() -> None:
    rng = np.random.default_rng(12345)
    counts = np.zeros(10)
    trials = 3000
    for _ in range(trials):
        counts[sample_clients(10, 3, rng)] += 1
    # each client is expected in 30% of rounds; sd of the frequency ~ 0.0084
    np.testing.assert_allclose(counts / trials, 0.3, atol=0.04)


@pytest.mark.parametrize(("n", "k"), [(10, 0), (10, 11), (10, -1), (0, 0), (0, 1)])
def test_sample_clients_out_of_range(n: int, k: int) -> None:
    with pytest.raises(ValueError, match=f"cannot sample {k} of {n}"):
        sample_clients(n, k, np.random.default_rng(0))


def test_derive_seed_deterministic_and_in_range() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    for words in [(0,), (1, 2, 3), (2**40, 7), (123, 456, 789, 2)]:
        s = derive_seed(*words)
        assert isinstance(s, int)
        assert 0 <= s < 2**63


def test_derive_seed_distinct_over_1000_pairs() -> None:
    seeds = {derive_seed(a, b) for a in range(40) for b in range(25)}
    assert len(seeds) == 1000


def test_derive_seed_depends_on_order() -> None:
    assert derive_seed(1, 2) != derive_seed(2, 1)


def test_client_seed_deterministic_and_distinct() -> None:
    assert client_seed(7, 3, 5) == client_seed(7, 3, 5)
    seeds = {client_seed(7, r, c) for r in range(10) for c in range(100)}
    assert len(seeds) == 1000
    # a different run seed gives a disjoint set of client seeds
    other = {client_seed(8, r, c) for r in range(10) for c in range(100)}
    assert not seeds & other


def test_client_seed_usable_as_torch_seed() -> None:
    for c in range(20):
        torch.Generator().manual_seed(client_seed(0, 1, c))


def first_draws(rng: np.random.Generator) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(0, 2**62, 4))


def test_round_rng_deterministic() -> None:
    assert first_draws(round_rng(5, 3)) == first_draws(round_rng(5, 3))


def test_round_rng_differs_across_rounds_and_seeds() -> None:
    streams = {first_draws(round_rng(s, t)) for s in range(5) for t in range(50)}
    assert len(streams) == 250
