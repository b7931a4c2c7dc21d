"""Gradients from circuit evaluations only: the parameter-shift rule (Eq. 5) and SPSA.

Both build ONE matrix of parameter values holding every evaluation that a
batch needs, so that an executor sends the whole batch, with all its shifts,
to the hardware in a single call; then they assemble the results.

Row layout of `shifted_values` for B samples and N parameters: sample-major,
1 + 2N rows per sample,

    row b*(1+2N)            the unshifted values of sample b
    row b*(1+2N) + 1 + i    parameter i shifted by +shift      (i < N)
    row b*(1+2N) + 1 + N + i  parameter i shifted by -shift

and `spsa_values` lays out 1 + 2k rows per sample the same way, with the
k random directions in place of the N parameters.

For a gate exp(-i t P / 2) with P a Pauli string, <H>(t) is a*cos(t) + b*sin(t) + c,
so (<H>(t + s) - <H>(t - s)) / (2 sin s) is the exact derivative for any s;
s = pi/2 (Eq. 5) gives the largest signal against shot noise.
"""

from __future__ import annotations

import numpy as np

SHIFT = np.pi / 2


def shifted_values(
    values: np.ndarray, shift: float = SHIFT, columns: np.ndarray | None = None
) -> np.ndarray:
    """(B, N) -> (B*(1+2K), N): per sample, the unshifted row, then +shift, then -shift rows.

    Only the K `columns` are shifted (all N by default); the others keep their values,
    so parameters whose gradient is not needed cost no circuits.
    """
    values = np.asarray(values, dtype=float)
    batch, n = values.shape
    basis = np.eye(n) if columns is None else np.eye(n)[np.asarray(columns, dtype=int)]  # (K, N)
    k = len(basis)
    offsets = np.concatenate([np.zeros((1, n)), shift * basis, -shift * basis])  # (1+2K, N)
    return (values[:, None, :] + offsets[None]).reshape(batch * (1 + 2 * k), n)


def assemble(
    results: np.ndarray, batch: int, n: int, shift: float = SHIFT
) -> tuple[np.ndarray, np.ndarray]:
    """(B*(1+2N), O) results of `shifted_values` rows -> (expectations (B, O), grads (B, O, N))."""
    results = np.asarray(results, dtype=float).reshape(batch, 1 + 2 * n, -1)  # (B, 1+2N, O)
    plus, minus = results[:, 1 : 1 + n], results[:, 1 + n :]  # (B, N, O) each
    grads = (plus - minus) / (2 * np.sin(shift))  # (B, N, O)
    return results[:, 0], grads.transpose(0, 2, 1)


def spsa_values(
    values: np.ndarray, k: int, c: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(B, N) -> (rows (B*(1+2k), N), directions (B, k, N) of +-1).

    Per sample: the unshifted row, then values + c * d_j, then values - c * d_j
    for k Rademacher directions d_j drawn from `rng` (independently per sample).
    """
    values = np.asarray(values, dtype=float)
    batch, n = values.shape
    directions = rng.choice(np.array([-1.0, 1.0]), size=(batch, k, n))  # (B, k, N)
    base = values[:, None, :]  # (B, 1, N)
    rows = np.concatenate(
        [base, base + c * directions, base - c * directions], axis=1
    )  # (B, 1+2k, N)
    return rows.reshape(batch * (1 + 2 * k), n), directions


def spsa_assemble(
    results: np.ndarray, directions: np.ndarray, c: float
) -> tuple[np.ndarray, np.ndarray]:
    """(B*(1+2k), O) results of `spsa_values` rows -> (expectations (B, O), grads (B, O, N)).

    Each direction d gives g_d = (f(v + c d) - f(v - c d)) / (2c) * d; the
    estimate is their mean over the k directions. Since E[d d^T] = I, the
    estimate has no bias from the random directions (only the O(c^2) bias of
    the central difference, small for small c) but it is noisy: its variance
    falls as 1/k and grows with N, and shot noise is amplified by 1/c. Use it
    when N is large and 2N evaluations per sample are too many.
    """
    batch, k, n = directions.shape
    results = np.asarray(results, dtype=float).reshape(batch, 1 + 2 * k, -1)  # (B, 1+2k, O)
    slopes = (results[:, 1 : 1 + k] - results[:, 1 + k :]) / (2 * c)  # (B, k, O)
    grads = np.einsum("bko,bkn->bon", slopes, directions) / k  # (B, O, N)
    return results[:, 0], grads
