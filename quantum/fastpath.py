"""NumPy fast path for small real circuits: the whole forward and adjoint backward, one node.

On a few qubits (2**n of a few hundred amplitudes) the torch statevector spends
its time dispatching hundreds of tiny ops and autograd nodes, not computing.
Here a real circuit (RY, H, X, Z, CX, CZ, SWAP; `CompiledCircuit.is_real`) is
recompiled into a handful of dense steps, run in NumPy, and wrapped in one
`torch.autograd.Function` (forward: (B, P) values -> (B, O) expectations;
backward: the adjoint method). `CompiledCircuit.expectations(..., "adjoint")`
takes it for CPU values when the circuit has at most FAST_MAX_QUBITS qubits.

Layout. The state (B, 2**n) is viewed as a matrix Psi (B, rows, cols): rows =
2**n_hi for the high qubits, cols = 2**n_lo for the low ones (n_lo = n // 2).

Blocks. A maximal run of one-qubit gates is one block: on each qubit q a
product A_q of 2x2 real matrices (consecutive RYs on a qubit merge into one
RY of the summed angle; all merged angles of the circuit come from one matmul,
values @ C). The block is U = M_hi (x) M_lo with M_hi, M_lo the Kronecker
products of the A_q of each half, built for every block and sample at once;
applying it is two batched matmuls, Psi <- M_hi Psi M_lo^T (a first block on
|0...0> is just the product state of the first columns). Runs of
X/Z/CX/CZ/SWAP between blocks are one signed permutation (a gather).

Gradients (adjoint). The forward keeps the state at the end of every block
(small circuits: a few states). From lambda = dE/dpsi at the end, blocks and
permutations are un-applied in reverse (U^-1 = U^T: real orthogonal). For an
RY on qubit q inside a block, with W the gates of q after it in the block,

    dE/dtheta = 1/2 <lambda| (W J W^T)_q |psi> = det(W)/2 <lambda| J_q |psi>,

J = -iY = [[0, -1], [1, 0]] (W J W^T = det(W) J for orthogonal 2x2 W), psi and
lambda taken at the end of the block: every other gate of the block acts on
other qubits and commutes with J_q. So one overlap omega_q per block and qubit
serves all of its rotations: omega_q = sum_ji X[j, i] J_q[j, i] with X the
cross matrix of the qubit's half (Lambda^T Psi for the low half, Lambda Psi^T
for the high one), a batched matmul, then a constant linear map. The gradient
is then one matmul, Omega (B, blocks * n) @ S (blocks * n, P).

Exact up to rounding (float64: ~1e-15), in the dtype of `values` (float32 or
float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from quantum.statevector import (
    _FIXED_1Q,
    _PERMUTING,
    _REAL,
    _TWO_QUBIT,
    CompiledCircuit,
    PauliTerm,
    permutation,
)

FAST_MAX_QUBITS = 12  # beyond, the per-sample block matrices (2**n per half) grow large
# The forward keeps ~5 arrays of B * 2**n * blocks numbers (states per block, block
# matrices and their copies); beyond this many, the torch adjoint (a few states) is taken.
FAST_MAX_ELEMENTS = 1 << 24
_FIXED = {
    name: np.array(m, dtype=np.float64).reshape(2, 2)
    for name, m in ((g, [0.0 if e is None else e for e in _FIXED_1Q[g]]) for g in ("h", "x", "z"))
}


@dataclass
class _Qubit:
    """The gates of one block on one qubit: factors, last applied last."""

    factors: list = field(default_factory=list)  # ("rot", k) or ("fixed", name)
    rotations: list = field(default_factory=list)  # (column, factor position), parameters only


@dataclass(frozen=True)
class _Perm:
    """new[:, j] = sign[j] * old[:, src[j]]; and the inverse (inv_src, inv_sign)."""

    src: np.ndarray
    sign: np.ndarray | None
    inv_src: np.ndarray
    inv_sign: np.ndarray | None


class FastCircuit:
    """A real `CompiledCircuit` recompiled into NumPy blocks and permutations.

    steps: ("block", b) or ("perm", _Perm), in circuit order. Per block b and qubit q,
    index[q, b] is the merged rotation that is the whole of A_q (K: identity), or
    `products` lists the factors of a longer one.
    """

    def __init__(self, circuit: CompiledCircuit):
        if not circuit.is_real:
            raise ValueError("the fast path needs a real circuit")
        n, num_params = circuit.num_qubits, circuit.num_parameters
        self.num_qubits, self.num_parameters = n, num_params
        self.n_lo = n // 2
        self.n_hi = n - self.n_lo
        steps: list = []  # ("block", k) | ("perm", gates)
        blocks: list[dict[int, _Qubit]] = []
        columns: list[list[int]] = []  # parameter columns of each merged rotation
        offsets: list[float] = []  # bound angles of each merged rotation
        for op in circuit.ops:
            if op.gates or op.name in _TWO_QUBIT or op.name in _PERMUTING and not _is_block(steps):
                gates = op.gates or (op,)
                if steps and steps[-1][0] == "perm":
                    steps[-1] = ("perm", steps[-1][1] + gates)
                else:
                    steps.append(("perm", gates))
                continue
            if op.name not in _REAL:  # pragma: no cover - is_real checked above
                raise ValueError(f"gate {op.name} is not real")
            if not _is_block(steps):
                steps.append(("block", len(blocks)))
                blocks.append({})
            qubit = blocks[-1].setdefault(op.qubits[0], _Qubit())
            if op.column is None:
                qubit.factors.append(("fixed", op.name))
                continue
            last = qubit.factors[-1] if qubit.factors else None
            if last is None or last[0] != "rot":
                qubit.factors.append(("rot", len(columns)))
                columns.append([])
                offsets.append(0.0)
            k = qubit.factors[-1][1]
            if op.column < num_params:
                columns[k].append(op.column)
                qubit.rotations.append((op.column, len(qubit.factors) - 1))
            else:
                offsets[k] += circuit.bound[op.column - num_params]
        self.num_blocks = nb = len(blocks)
        self.num_rotations = K = len(columns)
        self.combine = np.zeros((num_params, K))  # angle of merged rotation k = values @ C
        for k, cols in enumerate(columns):
            for col in cols:
                self.combine[col, k] += 1.0
        self.offsets = np.array(offsets)
        self.index = np.full((n, nb), K, dtype=np.intp)  # into [rotations..., identity]
        self.products: list[tuple[int, int, list]] = []  # (q, b, factors) of longer products
        self.grad_map = np.zeros((nb * n, num_params))  # Omega (B, nb * n) @ grad_map
        self.active = np.zeros((nb, 2), dtype=bool)  # block touches the (hi, lo) half
        self.needs = np.zeros((nb, 2), dtype=bool)  # block has parameters on the half
        for b, block in enumerate(blocks):
            for q, qubit in block.items():
                half = 0 if q >= self.n_lo else 1
                self.active[b, half] = True
                if len(qubit.factors) == 1 and qubit.factors[0][0] == "rot":
                    self.index[q, b] = qubit.factors[0][1]
                else:
                    self.products.append((q, b, qubit.factors))
                for col, position in qubit.rotations:
                    flips = sum(f[0] == "fixed" for f in qubit.factors[position + 1 :])
                    self.grad_map[b * n + q, col] += 0.5 * (-1) ** flips  # det H = X = Z = -1
                    self.needs[b, half] = True
        self.steps: list = []
        for kind, arg in steps:
            self.steps.append((kind, arg if kind == "block" else self._perm(arg)))
        self.initial = bool(steps) and steps[0][0] == "block"  # block 0 acts on |0...0>
        param_blocks = [b for b in range(nb) if self.needs[b].any()]
        self.first_param_block = param_blocks[0] if param_blocks else None
        self._omega_maps = {half: _omega_map(k) for half, k in ((0, self.n_hi), (1, self.n_lo))}
        self._cast: dict = {}
        self._observables: dict = {}

    def _perm(self, gates) -> _Perm:
        src, neg = (t.numpy() for t in permutation(gates, self.num_qubits, torch.device("cpu")))
        inv = np.empty_like(src)
        inv[src] = np.arange(src.size)
        sign = (1 - 2 * neg).astype(np.float64) if neg.any() else None
        return _Perm(src, sign, inv, None if sign is None else sign[inv])

    # ------------------------------------------------------------ constants per dtype

    def _constants(self, dtype: np.dtype) -> dict:
        """The constant arrays in `dtype`, cached. A perm step becomes (src, sign) of the
        permutation and (src, sign) of its inverse on the transposed (cols, rows) layout
        that the backward keeps lambda in."""
        if dtype not in self._cast:
            cast = lambda a: None if a is None else np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
            size = 1 << self.num_qubits
            to_normal = np.arange(size).reshape(1 << self.n_hi, -1).T.ravel()  # of (cols, rows)
            to_transposed = np.empty_like(to_normal)
            to_transposed[to_normal] = np.arange(size)
            steps = []
            for kind, arg in self.steps:
                if kind == "perm":
                    inv_src = to_transposed[arg.inv_src[to_normal]]
                    inv_sign = None if arg.inv_sign is None else arg.inv_sign[to_normal]
                    arg = (arg.src, cast(arg.sign), inv_src, cast(inv_sign))
                steps.append((kind, arg))
            self._cast[dtype] = {
                "combine": cast(self.combine),
                "offsets": cast(self.offsets)[:, None],
                "grad_map": cast(self.grad_map),
                "omega_hi": cast(-self._omega_maps[0]),  # for the transposed cross matrix
                "omega_lo": cast(self._omega_maps[1]),
                "fixed": {name: cast(m) for name, m in _FIXED.items()},
                "steps": steps,
            }
        return self._cast[dtype]

    def observables(self, terms: Sequence[tuple[PauliTerm, ...]], dtype: np.dtype) -> list:
        """[(perm or None, weights (2**n, O))]: E = sum of (psi * psi[:, perm]) @ weights."""
        key = (tuple(terms), np.dtype(dtype))
        if key not in self._observables:
            n = self.num_qubits
            index = np.arange(1 << n)
            groups: dict[int, np.ndarray] = {}
            for k, op_terms in enumerate(terms):
                for term in op_terms:
                    if term.ny % 2:  # imaginary on a real state: contributes 0
                        continue
                    x = sum(1 << q for q in term.x)
                    z = sum(1 << q for q in term.z)
                    # (P psi)[j] = i^ny (-1)^popcount((j ^ x) & z) psi[j ^ x]
                    parity = np.zeros_like(index)
                    for q in range(n):
                        if z >> q & 1:
                            parity ^= ((index ^ x) >> q) & 1
                    sign = (1 - 2 * parity) * (-1) ** (term.ny // 2)
                    weights = groups.setdefault(x, np.zeros((1 << n, len(terms))))
                    weights[:, k] += term.coeff * sign
            self._observables[key] = [
                (None if x == 0 else index ^ x, np.ascontiguousarray(w, dtype=dtype))
                for x, w in sorted(groups.items())
            ]
        return self._observables[key]

    # ------------------------------------------------------------ simulation

    def _matrices(self, values: np.ndarray, const: dict) -> tuple:
        """The state after block 0 if it is the first step (else None), and the Kronecker
        products (rows, rows, nb, B) of the high and (cols, cols, nb, B) of the low qubits' 2x2
        matrices of the other blocks (block 0 included if not first), every sample;
        batch axes last, for long inner loops."""
        B, dtype, n, nb = values.shape[0], values.dtype, self.num_qubits, self.num_blocks
        K = self.num_rotations
        half = (values @ const["combine"]).T  # (K, B)
        half += const["offsets"]
        half *= 0.5
        cos, sin = np.cos(half), np.sin(half)
        rot = np.empty((K + 1, 2, 2, B), dtype=dtype)  # RY(phi_k) per sample; last: identity
        rot[:K, 0, 0] = cos
        rot[:K, 1, 1] = cos
        rot[:K, 1, 0] = sin
        np.negative(sin, out=rot[:K, 0, 1])
        rot[K] = np.eye(2, dtype=dtype)[:, :, None]
        a = rot[self.index]  # (n, nb, 2, 2, B)
        for q, b, factors in self.products:
            m = np.broadcast_to(np.eye(2, dtype=dtype), (B, 2, 2))
            for kind, arg in factors:
                m = (rot[arg].transpose(2, 0, 1) if kind == "rot" else const["fixed"][arg]) @ m
            a[q, b] = m.transpose(1, 2, 0)
        a = a.transpose(0, 2, 3, 1, 4)  # (n, 2, 2, nb, B)
        psi0 = None
        if self.initial:  # block 0 acts on |0...0>: only the first columns, a product state
            hi, lo = _kron_vectors(a[self.n_lo :, :, 0, 0]), _kron_vectors(a[: self.n_lo, :, 0, 0])
            psi0 = hi.T[:, :, None] * lo.T[:, None, :]  # (B, rows, cols)
            a, nb = a[:, :, :, 1:], nb - 1
        a = np.ascontiguousarray(a).reshape(n, 2, 2, nb * B)
        return psi0, _kron(a[self.n_lo :], nb, B), _kron(a[: self.n_lo], nb, B)

    def forward(self, values: np.ndarray, terms) -> tuple[np.ndarray, tuple]:
        """(B, P) -> expectations (B, O), and what the backward needs."""
        B, dtype = values.shape[0], values.dtype
        const = self._constants(dtype)
        psi, k_hi, k_lo = self._matrices(values, const)  # psi: None for |0...0>
        m_hi, m_lo_t = _batch_first(k_hi), _batch_first(k_lo, transpose=True)
        skip = int(self.initial)  # block b has matrices m_hi[b - skip], m_lo_t[b - skip]
        states = {}  # the state at the end of each block (B, rows, cols)
        for kind, arg in const["steps"]:
            if kind == "perm":
                psi = _gather(self._zero_state(B, dtype) if psi is None else psi, *arg[:2])
                continue
            b = arg
            if b >= skip:  # psi is set: a perm or the first block came before
                if self.active[b, 0]:
                    psi = m_hi[b - skip] @ psi
                if self.active[b, 1]:
                    psi = psi @ m_lo_t[b - skip]
            states[b] = psi
        if psi is None:
            psi = self._zero_state(B, dtype)
        flat = psi.reshape(B, -1)
        observables = self.observables(terms, dtype)
        out = np.zeros((B, len(terms)), dtype=dtype)
        for perm, weights in observables:
            out += (flat * flat if perm is None else flat * flat[:, perm]) @ weights
        return out, (psi, states, m_hi, m_lo_t, observables)

    def backward(self, saved: tuple, grad_out: np.ndarray) -> np.ndarray:
        """dE/dvalues (B, P) for dL/dE = grad_out (B, O), by the adjoint method.

        lambda is kept transposed, Lambda^T (B, cols, rows), so that every matmul below
        takes contiguous operands: un-applying a block is Lambda^T <- M_lo^T Lambda^T M_hi.
        """
        psi, states, m_hi, m_lo_t, observables = saved
        B, rows, cols = psi.shape
        n, dtype = self.num_qubits, psi.dtype
        if self.first_param_block is None:
            return np.zeros((B, self.num_parameters), dtype=dtype)
        const = self._constants(dtype)
        flat = psi.reshape(B, rows * cols)
        lam = np.zeros_like(flat)  # dE/dpsi
        for perm, weights in observables:
            hw = grad_out @ weights.T  # (B, 2**n)
            if perm is None:
                hw *= 2
                lam += hw * flat
            else:
                lam += (hw + hw[:, perm]) * flat[:, perm]
        lam_t = np.ascontiguousarray(lam.reshape(B, rows, cols).transpose(0, 2, 1))
        omega = np.zeros((B, self.num_blocks, n), dtype=dtype)
        for kind, arg in reversed(const["steps"]):
            if kind == "perm":
                lam_t = _gather(lam_t, *arg[2:])
                continue
            b = arg
            if self.needs[b, 0]:  # (Lambda Psi^T)^T = Psi Lambda^T (B, rows, rows)
                cross = states[b] @ lam_t
                omega[:, b, self.n_lo :] = cross.reshape(B, -1) @ const["omega_hi"]
            if self.needs[b, 1]:  # Lambda^T Psi (B, cols, cols)
                cross = lam_t @ states[b]
                omega[:, b, : self.n_lo] = cross.reshape(B, -1) @ const["omega_lo"]
            if b == self.first_param_block:
                break
            skip = int(self.initial)
            if self.active[b, 1]:
                lam_t = m_lo_t[b - skip] @ lam_t
            if self.active[b, 0]:
                lam_t = lam_t @ m_hi[b - skip]
        return omega.reshape(B, -1) @ const["grad_map"]

    def fits(self, batch: int) -> bool:
        """Whether a batch this large keeps the fast path's memory small (FAST_MAX_ELEMENTS)."""
        return batch * (1 << self.num_qubits) * max(1, self.num_blocks) <= FAST_MAX_ELEMENTS

    def expectations(self, values: Tensor, terms: Sequence[tuple[PauliTerm, ...]]) -> Tensor:
        """<O_k> (B, O) from values (B, P) on the CPU, differentiable w.r.t. values."""
        return _FastExpectation.apply(values, self, tuple(terms))

    def _zero_state(self, batch: int, dtype) -> np.ndarray:
        psi = np.zeros((batch, 1 << self.n_hi, 1 << self.n_lo), dtype=dtype)
        psi[:, 0, 0] = 1
        return psi


def _is_block(steps: list) -> bool:
    return bool(steps) and steps[-1][0] == "block"


def _kron(a: np.ndarray, nb: int, batch: int) -> np.ndarray:
    """Kronecker products of k 2x2 matrices, (k, 2, 2, nb * B) -> (2**k, 2**k, nb, B);
    a[0] acts on the least significant bit."""
    k = a.shape[0]
    if k == 0:
        return np.ones((1, 1, nb, batch), dtype=a.dtype)
    m = a[k - 1]
    for q in range(k - 2, -1, -1):
        size = m.shape[0] * 2
        m = (m[:, None, :, None] * a[q][None, :, None, :]).reshape(size, size, -1)
    return m.reshape(m.shape[0], m.shape[1], nb, batch)


def _kron_vectors(v: np.ndarray) -> np.ndarray:
    """Kronecker products of k 2-vectors, (k, 2, B) -> (2**k, B); v[0] the lowest bit."""
    if v.shape[0] == 0:
        return np.ones((1, v.shape[-1]), dtype=v.dtype)
    out = v[-1]
    for q in range(v.shape[0] - 2, -1, -1):
        out = (out[:, None] * v[q][None]).reshape(-1, v.shape[-1])
    return out


def _batch_first(m: np.ndarray, transpose: bool = False) -> np.ndarray:
    """(s, s, nb, B) -> (nb, B, s, s) contiguous, each matrix transposed if asked."""
    return np.ascontiguousarray(m.transpose((2, 3, 1, 0) if transpose else (2, 3, 0, 1)))


def _omega_map(k: int) -> np.ndarray:
    """(4**k, k): omega_t = sum_ji X[j, i] J_t[j, i] for a (2**k, 2**k) cross matrix X."""
    size = 1 << k
    out = np.zeros((size, size, k))
    for t in range(k):
        for i in range(size):
            j = i ^ (1 << t)
            out[j, i, t] = 1.0 if i >> t & 1 == 0 else -1.0  # J[1, 0] = 1, J[0, 1] = -1
    return out.reshape(size * size, k)


def _gather(psi: np.ndarray, src: np.ndarray, sign: np.ndarray | None) -> np.ndarray:
    """A (..., rows, cols) state permuted (and signed) along its flattened amplitudes."""
    shape = psi.shape
    flat = psi.reshape(-1, shape[-2] * shape[-1])
    out = np.take(flat, src, axis=1)
    if sign is not None:
        out *= sign
    return out.reshape(shape)


class _FastExpectation(torch.autograd.Function):
    """FastCircuit forward and adjoint backward as one autograd node."""

    @staticmethod
    def forward(ctx, values, circuit, terms):  # (B, P) -> (B, O)
        out, saved = circuit.forward(values.detach().numpy(), terms)
        ctx.circuit, ctx.saved = circuit, saved
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # (B, O) -> (B, P)
        g = np.ascontiguousarray(grad_out.numpy(), dtype=ctx.saved[0].dtype)
        return torch.from_numpy(ctx.circuit.backward(ctx.saved, g)), None, None
