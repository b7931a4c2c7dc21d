"""Tests for federated.shamir: t-of-n sharing over GF(2^21 - 9), exact float arithmetic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats

from federated import shamir
from federated.shamir import PRIME, ShamirError

KEY = bytes(range(32))


def poly_eval(coefficients: list[int], x: int) -> int:
    """sum_j c_j x^j mod p with Python integers: the reference for the vectorised code."""
    return sum(c * pow(x, j, PRIME) for j, c in enumerate(coefficients)) % PRIME


def random_secrets(m: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(m, 32), dtype=np.uint8)


def test_prime_is_prime_and_words_fit():
    assert PRIME == 2**21 - 9
    assert all(PRIME % d for d in range(2, int(PRIME**0.5) + 1))
    assert PRIME > 2**16  # a 16-bit word is a field element
    assert 1024 * (PRIME - 1) ** 2 < 2**53  # a block of products is exact in float64


def test_share_words_matches_polynomials_from_the_keystream():
    words = np.array([[7, 65535], [0, 123]], dtype=np.int64)
    points = [1, 5, 2_000_000]
    shares = shamir.share_words(words, 3, points, KEY)  # (3, 2, 2)
    random = shamir.field_elements(KEY, 2 * words.size).reshape(2, -1)  # rows a_1, a_2
    for i, x in enumerate(points):
        for j, s in enumerate(words.reshape(-1)):
            expected = poly_eval([int(s), int(random[0, j]), int(random[1, j])], x)
            assert shares[i].reshape(-1)[j] == expected


@pytest.mark.parametrize(("threshold", "n"), [(1, 1), (2, 3), (3, 5), (7, 10), (67, 100)])
def test_any_threshold_subset_reconstructs(threshold, n):
    secrets = random_secrets(4, seed=n)
    points = np.arange(1, n + 1) * 3  # not 1..n, so the interpolation is not a special case
    shares = shamir.share(secrets, threshold, points, KEY)
    assert shares.shape == (n, 4, shamir.WORDS)
    rng = np.random.default_rng(threshold)
    for _ in range(3):
        chosen = np.sort(rng.choice(n, size=threshold, replace=False))
        back = shamir.reconstruct(points[chosen], shares[chosen], threshold)
        np.testing.assert_array_equal(back, secrets)


def test_more_shares_than_threshold_use_the_first_t():
    secrets = random_secrets(2, seed=1)
    points = [4, 9, 11, 20, 31]
    shares = shamir.share(secrets, 3, points, KEY)
    shares[4] = (shares[4] + 1) % PRIME  # the 5th share is never read with t = 3
    np.testing.assert_array_equal(shamir.reconstruct(points, shares, 3), secrets)


def test_fewer_than_threshold_shares_raise():
    shares = shamir.share(random_secrets(1, 0), 3, [1, 2, 3], KEY)
    with pytest.raises(ShamirError, match="cannot reconstruct"):
        shamir.reconstruct([1, 2], shares[:2], 3)


def test_large_threshold_crosses_float_blocks():
    threshold = 1100  # > 1024 terms per exact block
    words = np.array([[1, PRIME - 1, 65535]], dtype=np.int64)
    points = np.arange(1, threshold + 1)
    shares = shamir.share_words(words, threshold, points, KEY)
    back = shamir.reconstruct_words(points, shares, threshold)
    np.testing.assert_array_equal(back, words)


def test_lagrange_coefficients_reproduce_monomials():
    points = [2, 3, 7, 11]
    lam = [int(v) for v in shamir.lagrange_at_zero(points)]
    for j in range(len(points)):  # sum_i lambda_i x_i^j = [j == 0] for j < t
        total = sum(li * pow(x, j, PRIME) for li, x in zip(lam, points, strict=True)) % PRIME
        assert total == (1 if j == 0 else 0)


def test_float_mod_is_exact():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**53, size=100_000, dtype=np.int64)
    x = np.concatenate([x, [0, PRIME - 1, PRIME, PRIME + 1, 2**53 - 1, 3 * PRIME]])
    got = shamir._mod(x.astype(np.float64)).astype(np.int64)
    np.testing.assert_array_equal(got, x % PRIME)


def test_field_elements_are_deterministic_uniform_and_in_range():
    a = shamir.field_elements(KEY, 200_000)
    np.testing.assert_array_equal(a, shamir.field_elements(KEY, 200_000))
    assert a.min() >= 0 and a.max() < PRIME
    assert not np.array_equal(a[:100], shamir.field_elements(bytes(32), 100))
    counts = np.bincount(a * 32 // PRIME, minlength=32)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_one_share_below_threshold_is_uniform_whatever_the_secret():
    """t - 1 = 1 share of a 2-of-n sharing: same (uniform) law for secret 0 and secret 65535."""
    keys = [i.to_bytes(32, "little") for i in range(3000)]
    for secret in (0, 65535):
        shares = np.array(
            [shamir.share_words(np.array([secret]), 2, [5, 6], k)[0, 0] for k in keys]
        )
        counts = np.bincount(shares * 16 // PRIME, minlength=16)
        assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize(
    "points", [[0, 1, 2], [1, 1, 2], [1, 2, PRIME], [[1, 2], [3, 4]], []], ids=str
)
def test_bad_points_raise(points):
    with pytest.raises(ShamirError):
        shamir.share_words(np.array([1]), 1, points, KEY)


def test_bad_inputs_raise():
    with pytest.raises(ShamirError, match="threshold"):
        shamir.share_words(np.array([1]), 3, [1, 2], KEY)
    with pytest.raises(ShamirError, match="field elements"):
        shamir.share_words(np.array([PRIME]), 1, [1], KEY)
    with pytest.raises(ShamirError, match="shape"):
        shamir.share(np.zeros((2, 31), dtype=np.uint8), 1, [1], KEY)
    with pytest.raises(ShamirError, match="32-byte key"):
        shamir.field_elements(b"short", 3)
    with pytest.raises(ShamirError, match="inconsistent"):
        shamir.words_to_secrets(np.full((1, shamir.WORDS), 1 << 16))


def test_secret_words_round_trip():
    secrets = random_secrets(5, seed=3)
    words = shamir.secrets_to_words(secrets)
    assert words.max() < 2**16
    np.testing.assert_array_equal(shamir.words_to_secrets(words), secrets)


def test_every_pair_of_two_of_three_shares_agrees():
    secrets = random_secrets(3, seed=9)
    points = [10, 20, 30]
    shares = shamir.share(secrets, 2, points, KEY)
    for i, j in itertools.combinations(range(3), 2):
        back = shamir.reconstruct([points[i], points[j]], shares[[i, j]], 2)
        np.testing.assert_array_equal(back, secrets)
