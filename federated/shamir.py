"""Shamir t-of-n secret sharing of 32-byte secrets, vectorised over many secrets.

A secret s (32 bytes) is split into 16 little-endian 16-bit words s_0..s_15, each an
element of the prime field GF(p), p = 2^21 - 9. For each word the dealer draws a random
polynomial f(X) = s_j + a_1 X + ... + a_{t-1} X^{t-1} over GF(p) and gives the holder
with evaluation point x (1 <= x < p) the share f(x) (Shamir 1979). Any t shares give
f(0) back by Lagrange interpolation,

    f(0) = sum_i f(x_i) * lambda_i,    lambda_i = prod_{j != i} x_j / (x_j - x_i)  (mod p),

and t - 1 shares say nothing about it.

Both sharing and reconstruction are one matrix product over GF(p): (points x t) Vandermonde
times (t x words) coefficients, and (1 x t) Lagrange row times (t x words) shares. With
p < 2^21 every product is < 2^42, so a float64 matrix product of up to 2^10 terms is exact
(< 2^53) and runs in BLAS; longer sums are cut into blocks of 2^10 and reduced mod p.

Coefficients must be unpredictable: they come from `field_elements`, an AES-256-CTR
keystream under a 32-byte secret key (not from a numpy Generator, which is not a
cryptographic generator). A key derived from a secret seed keeps runs reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qfl.errors import QflError

PRIME: Final = 2_097_143  # 2^21 - 9, prime
SECRET_BYTES: Final = 32
WORDS: Final = SECRET_BYTES // 2  # 16-bit words per secret, each < PRIME
_BLOCK: Final = 1024  # terms per exact float64 dot product: 1024 * (p - 1)^2 < 2^53
_MASK_21: Final = (1 << 21) - 1
_INV_P: Final = 1.0 / PRIME


class ShamirError(QflError):
    """Shares cannot be made or combined (too few, duplicate points, corrupted values)."""


def field_elements(key: bytes, count: int) -> np.ndarray:
    """`count` uniform elements of GF(p) from the AES-256-CTR keystream of `key`, (count,) int64.

    Rejection sampling: each 32-bit keystream word gives its low 21 bits, kept when < p
    (a word is dropped with probability 9 / 2^21), so the elements are exactly uniform.
    """
    if not isinstance(key, bytes) or len(key) != 32:
        raise ShamirError("field_elements needs a 32-byte key")
    if count < 0:
        raise ShamirError(f"count must be >= 0, got {count}")
    draw = count + count // 1000 + 64
    while True:
        words = np.frombuffer(keystream(key, 4 * draw), dtype="<u4") & np.uint32(_MASK_21)
        kept = words[words < PRIME]
        if kept.size >= count:
            return kept[:count].astype(np.int64)
        draw *= 2  # the same stream, longer: still a function of the key


def keystream(key: bytes, nbytes: int) -> bytearray:
    """`nbytes` of the AES-256-CTR keystream of `key` (zero nonce: one key, one stream)."""
    out = bytearray(nbytes)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    encryptor.update_into(bytes(nbytes), out)
    return out


def secrets_to_words(secrets: np.ndarray) -> np.ndarray:
    """(m, 32) uint8 secrets -> (m, 16) int64 field elements (little-endian 16-bit words)."""
    secrets = np.ascontiguousarray(secrets, dtype=np.uint8)
    if secrets.ndim != 2 or secrets.shape[1] != SECRET_BYTES:
        raise ShamirError(f"secrets must have shape (m, {SECRET_BYTES}), got {secrets.shape}")
    return secrets.view("<u2").astype(np.int64)


def words_to_secrets(words: np.ndarray) -> np.ndarray:
    """Inverse of `secrets_to_words`; a word >= 2^16 means the shares were corrupted."""
    words = np.asarray(words, dtype=np.int64)
    if words.ndim != 2 or words.shape[1] != WORDS:
        raise ShamirError(f"words must have shape (m, {WORDS}), got {words.shape}")
    if np.any(words < 0) or np.any(words >= 1 << 16):
        raise ShamirError("reconstructed value is not a secret: the shares are inconsistent")
    return np.ascontiguousarray(words.astype("<u2")).view(np.uint8).reshape(-1, SECRET_BYTES)


def _check_points(points: Sequence[int] | np.ndarray) -> np.ndarray:
    x = np.asarray(points, dtype=np.int64)
    if x.ndim != 1 or x.size == 0:
        raise ShamirError("evaluation points must be a non-empty 1-D sequence")
    if np.any(x < 1) or np.any(x >= PRIME):
        raise ShamirError(f"evaluation points must lie in [1, {PRIME})")
    if np.unique(x).size != x.size:
        raise ShamirError("evaluation points must be distinct")
    return x


def _mod(x: np.ndarray) -> np.ndarray:
    """x mod p for integer-valued float64 0 <= x < 2^53, exactly, in float arithmetic.

    q = floor(x / p) from a float product is off by at most one, and x - q p is exact
    (integers below 2^53), so one correction step lands in [0, p).
    """
    r = x - np.floor(x * _INV_P) * PRIME
    r[r < 0] += PRIME
    r[r >= PRIME] -= PRIME
    return r


def _matmul_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(a @ b) mod p for matrices with entries in [0, p), exact via float64 blocks (int64 out)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    out = _mod(a[:, :_BLOCK] @ b[:_BLOCK])
    for start in range(_BLOCK, a.shape[1], _BLOCK):
        out = _mod(out + _mod(a[:, start : start + _BLOCK] @ b[start : start + _BLOCK]))
    return out.astype(np.int64)


def vandermonde(points: np.ndarray, threshold: int) -> np.ndarray:
    """V[i, j] = x_i^j mod p, shape (len(points), threshold)."""
    v = np.ones((points.size, threshold), dtype=np.int64)
    for j in range(1, threshold):
        v[:, j] = (v[:, j - 1] * points) % PRIME  # < 2^42: exact in int64
    return v


def share_words(
    words: np.ndarray, threshold: int, points: Sequence[int] | np.ndarray, key: bytes
) -> np.ndarray:
    """Shares of field elements `words` (any shape), one slice per point: (points, *shape).

    Coefficients a_1..a_{t-1} of every polynomial come from `field_elements(key, ...)`.
    """
    x = _check_points(points)
    words = np.asarray(words, dtype=np.int64)
    if not 1 <= threshold <= x.size:
        raise ShamirError(f"threshold {threshold} must be in [1, {x.size}] (number of holders)")
    if np.any(words < 0) or np.any(words >= PRIME):
        raise ShamirError("words must be field elements in [0, p)")
    flat = words.reshape(1, -1)  # (1, L)
    width = flat.shape[1]
    random = field_elements(key, (threshold - 1) * width).reshape(threshold - 1, width)
    coefficients = np.concatenate([flat, random])  # (t, L): row j multiplies x^j
    shares = _matmul_mod(vandermonde(x, threshold), coefficients)  # (points, L)
    return shares.reshape(x.size, *words.shape)


def share(
    secrets: np.ndarray, threshold: int, points: Sequence[int] | np.ndarray, key: bytes
) -> np.ndarray:
    """t-of-n shares of m 32-byte secrets ((m, 32) uint8): (points, m, 16) int64."""
    return share_words(secrets_to_words(secrets), threshold, points, key)


def lagrange_at_zero(points: Sequence[int] | np.ndarray) -> np.ndarray:
    """lambda_i = prod_{j != i} x_j / (x_j - x_i) mod p, so that f(0) = sum_i lambda_i f(x_i)."""
    x = [int(v) for v in _check_points(points)]
    out = []
    for i, xi in enumerate(x):
        num, den = 1, 1
        for j, xj in enumerate(x):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, PRIME - 2, PRIME) % PRIME)
    return np.array(out, dtype=np.int64)


def reconstruct_words(
    points: Sequence[int] | np.ndarray, shares: np.ndarray, threshold: int
) -> np.ndarray:
    """f(0) of every shared word from the shares of the first `threshold` points.

    `shares` has shape (len(points), *shape); returns (*shape) int64. Raises ShamirError
    with fewer than `threshold` shares.
    """
    x = _check_points(points)
    shares = np.asarray(shares, dtype=np.int64)
    if shares.shape[0] != x.size:
        raise ShamirError(f"{x.size} points but {shares.shape[0]} shares")
    if x.size < threshold:
        raise ShamirError(f"{x.size} shares cannot reconstruct a {threshold}-of-n secret")
    if np.any(shares < 0) or np.any(shares >= PRIME):
        raise ShamirError("shares must be field elements in [0, p)")
    used = shares[:threshold].reshape(threshold, -1)
    row = lagrange_at_zero(x[:threshold]).reshape(1, -1)
    return _matmul_mod(row, used).reshape(shares.shape[1:])


def reconstruct(
    points: Sequence[int] | np.ndarray, shares: np.ndarray, threshold: int
) -> np.ndarray:
    """The (m, 32) uint8 secrets behind (len(points), m, 16) shares."""
    shares = np.asarray(shares)
    if shares.ndim != 3 or shares.shape[2] != WORDS:
        raise ShamirError(f"shares must have shape (points, m, {WORDS}), got {shares.shape}")
    return words_to_secrets(reconstruct_words(points, shares, threshold))


__all__ = [
    "PRIME",
    "SECRET_BYTES",
    "WORDS",
    "ShamirError",
    "field_elements",
    "keystream",
    "lagrange_at_zero",
    "reconstruct",
    "reconstruct_words",
    "secrets_to_words",
    "share",
    "share_words",
    "vandermonde",
    "words_to_secrets",
]
