"""Batched statevector simulation in torch, compiled once from a qiskit circuit.

`compile_circuit(qc, parameters)` walks the circuit once into a list of gate
ops; `CompiledCircuit.run(values (B, P))` applies them to B states |0...0> at
once, each sample with its own angles (column k of `values` is parameter k).
A state is a (B, 2**n) tensor; a gate on qubit q views it as (B, L, 2, R) with
R = 2**q (qubit 0 is the least significant bit, as in qiskit) and mixes the
two slices along the middle axis.

Circuits made only of real gates (RY, H, X, Z, CX, CZ, SWAP) keep a real
state (float32 or float64: the dtype of `values`); the others use the complex
dtype of the same precision. Runs of X/Z/CX/CZ/SWAP are fused into one signed
permutation (a gather). Without autograd, gates are applied in place.

Gradients. Plain autograd through `run` stores one state per gate. The
adjoint method (Jones & Gacon 2020) keeps only the final state |psi> and
lambda = dE/dpsi, and walks the gates backwards, un-applying each gate U to
both; for a rotation U = exp(-i theta P / 2) the gradient is

    dE/dtheta = Re <lambda| dU/dtheta |psi_prev> = Re <lambda| (-i P / 2) |psi>,

with |psi> the state right after U. Memory is a few states whatever the depth.

Small real circuits on the CPU (at most fastpath.FAST_MAX_QUBITS qubits) take,
with method "adjoint", the NumPy fast path of quantum/fastpath.py instead: the
same adjoint gradients, with the whole forward and backward as one autograd
node, because tiny torch ops cost their dispatch, not their arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterExpression
from qiskit.quantum_info import SparsePauliOp
from torch import Tensor
from torch.autograd.function import once_differentiable

from qfl.errors import QuantumError

if TYPE_CHECKING:
    from quantum.fastpath import FastCircuit

Method = Literal["adjoint", "autograd"]
Pair = tuple[Tensor, Tensor]
Quad = tuple[Tensor, Tensor, Tensor, Tensor]
_R2 = math.sqrt(0.5)

# ---------------------------------------------------------------- gates
# A one-qubit gate is its 2x2 matrix (m00, m01, m10, m11) acting on the slices
# (a, b) = (qubit=0, qubit=1) of the state; an entry is a scalar, a (B, 1, 1)
# tensor (per-sample angles), or None for 0. c, s = cos, sin of half the angle.

Entry = Tensor | complex | None
Matrix = tuple[Entry, Entry, Entry, Entry]


def _rz(c: Tensor, s: Tensor) -> Matrix:
    phase = torch.complex(c, -s)  # exp(-i theta / 2)
    return phase, None, None, phase.conj()


_ROTATIONS: dict[str, Callable[[Tensor, Tensor], Matrix]] = {
    "rx": lambda c, s: (c, -1j * s, -1j * s, c),
    "ry": lambda c, s: (c, -s, s, c),
    "rz": _rz,
}
_FIXED_1Q: dict[str, Matrix] = {
    "h": (_R2, _R2, _R2, -_R2),
    "x": (None, 1, 1, None),
    "y": (None, -1j, 1j, None),
    "z": (1, None, None, -1),
    "s": (1, None, None, 1j),
    "sdg": (1, None, None, -1j),
}
# -i P for each rotation exp(-i theta P / 2): dU/dtheta = (-i P / 2) U.
_GENERATORS: dict[str, Matrix] = {
    "rx": (None, -1j, -1j, None),
    "ry": (None, -1, 1, None),
    "rz": (-1j, None, None, 1j),
}
# The same as (row, column, entry) terms, an entry equal to 1 first.
_GENERATOR_TERMS = {
    name: sorted(
        ((k // 2, k % 2, g) for k, g in enumerate(matrix) if g is not None),
        key=lambda term: term[2] != 1,
    )
    for name, matrix in _GENERATORS.items()
}
# A two-qubit gate permutes (and signs) the blocks q_jk, j = bit of its first
# qubit, k = bit of its second: out[i] = sign[i] * q[perm[i]] (perm an involution).
_TWO_QUBIT: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "cx": ((0, 1, 3, 2), (1, 1, 1, 1)),
    "cz": ((0, 1, 2, 3), (1, 1, 1, -1)),
    "swap": ((0, 2, 1, 3), (1, 1, 1, 1)),
}
_REAL = frozenset({"ry", "h", "x", "z", "cx", "cz", "swap", "perm"})
_INVERSE = {"s": "sdg", "sdg": "s"}  # every other fixed gate is its own inverse
_NO_OPS = frozenset({"id", "barrier"})
SUPPORTED = (*_ROTATIONS, *_FIXED_1Q, *_TWO_QUBIT)


def gate_matrix(name: str, c: Tensor | None, s: Tensor | None) -> Matrix:
    """The 2x2 matrix of a one-qubit gate (c, s: cos, sin of half the angle, (B, 1, 1))."""
    return _ROTATIONS[name](c, s) if name in _ROTATIONS else _FIXED_1Q[name]


def _is_one(m: Entry) -> bool:
    return not isinstance(m, Tensor) and m == 1


def _split1(state: Tensor, n: int, q: int) -> Pair:
    v = state.view(state.shape[0], 1 << (n - 1 - q), 2, 1 << q)  # (B, L, 2, R)
    return v[:, :, 0], v[:, :, 1]  # (B, L, R) each


def _split2(state: Tensor, n: int, first: int, second: int) -> Quad:
    hi, lo = max(first, second), min(first, second)
    v = state.view(state.shape[0], 1 << (n - 1 - hi), 2, 1 << (hi - lo - 1), 2, 1 << lo)
    h0l0, h0l1, h1l0, h1l1 = v[:, :, 0, :, 0], v[:, :, 0, :, 1], v[:, :, 1, :, 0], v[:, :, 1, :, 1]
    return (h0l0, h0l1, h1l0, h1l1) if first == hi else (h0l0, h1l0, h0l1, h1l1)


# ---------------------------------------------------------------- functional gates (autograd)


def _combine(m0: Entry, a: Tensor, m1: Entry, b: Tensor) -> Tensor:
    """m0 * a + m1 * b, skipping zero entries."""
    terms = [x if _is_one(m) else m * x for m, x in ((m0, a), (m1, b)) if m is not None]
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def apply_gate(
    state: Tensor, n: int, name: str, qubits: tuple[int, ...], c: Tensor | None, s: Tensor | None
) -> Tensor:
    """A new state (B, 2**n) after gate `name`; out of place, so autograd can follow it."""
    if name in _TWO_QUBIT:
        perm, sign = _TWO_QUBIT[name]
        quad = _split2(state, n, *qubits)
        q00, q01, q10, q11 = (
            quad[p] if g == 1 else -quad[p] for p, g in zip(perm, sign, strict=True)
        )
        if qubits[0] < qubits[1]:  # back to (hi, lo) block order
            q01, q10 = q10, q01
        rows = torch.stack((q00, q01), dim=3), torch.stack((q10, q11), dim=3)  # (B, A, M, 2, R)
        return torch.stack(rows, dim=2).flatten(1)
    m00, m01, m10, m11 = gate_matrix(name, c, s)
    a, b = _split1(state, n, qubits[0])
    return torch.stack((_combine(m00, a, m01, b), _combine(m10, a, m11, b)), dim=2).flatten(1)


# ---------------------------------------------------------------- in-place gates (no autograd)


def _scratch(buffer: Tensor, like: Tensor) -> Tensor:
    """A contiguous tensor shaped like `like`, on the front of a flat scratch buffer."""
    return buffer[: like.numel()].view(like.shape)


def _set_(y: Tensor, m: Entry, x: Tensor) -> None:  # y = m x
    if _is_one(m):
        y.copy_(x)
    else:
        torch.mul(x, m, out=y)


def _axpy_(y: Tensor, m: Entry, x: Tensor) -> None:  # y += m x
    if isinstance(m, Tensor):
        y.addcmul_(x, m)
    else:
        y.add_(x, alpha=m)


def _mix_(y: Tensor, m_self: Entry, m_other: Entry, other: Tensor) -> None:
    """y = m_self y + m_other other, in place."""
    if m_self is None:
        _set_(y, m_other, other)
        return
    if not _is_one(m_self):
        y.mul_(m_self)
    if m_other is not None:
        _axpy_(y, m_other, other)


def apply_gate_(
    state: Tensor,
    n: int,
    name: str,
    qubits: tuple[int, ...],
    c: Tensor | None,
    s: Tensor | None,
    scratch: Tensor,
) -> None:
    """Gate `name` applied to `state` (B, 2**n) in place; scratch: flat, >= half a state."""
    if name in _TWO_QUBIT:
        perm, sign = _TWO_QUBIT[name]
        quad = _split2(state, n, *qubits)
        for i, j in enumerate(perm):
            if i < j:  # swap blocks i and j
                tmp = _scratch(scratch, quad[i])
                tmp.copy_(quad[i])
                quad[i].copy_(quad[j])
                quad[j].copy_(tmp)
        for block, g in zip(quad, sign, strict=True):
            if g != 1:
                block.mul_(g)
        return
    m00, m01, m10, m11 = gate_matrix(name, c, s)
    a, b = _split1(state, n, qubits[0])
    old_a = a if m10 is None else _scratch(scratch, a).copy_(a)
    _mix_(a, m00, m01, b)
    _mix_(b, m11, m10, old_a)


# ---------------------------------------------------------------- fused permutations
# X, Z, CX, CZ and SWAP map each basis state to +-1 times another: a run of them is
# one signed permutation, new[j] = sign[j] * old[src[j]], applied as one gather.

_PERMUTING = frozenset({"x", "z", "cx", "cz", "swap"})
_GATHER_MAX = 1 << 22  # larger states apply the gates of a run one by one, in place


def _basis_map(name: str, qubits: tuple[int, ...], k: Tensor) -> tuple[Tensor, Tensor | None]:
    """pi(k) and (or None) the 0/1 negation of G|k> = (-1)^neg(k) |pi(k)>, for indices k."""
    bit = [(k >> q) & 1 for q in qubits]
    if name == "x":
        return k ^ (1 << qubits[0]), None
    if name == "cx":
        return k ^ (bit[0] << qubits[1]), None
    if name == "swap":
        differ = bit[0] ^ bit[1]
        return k ^ (differ << qubits[0]) ^ (differ << qubits[1]), None
    return k, bit[0] if name == "z" else bit[0] & bit[1]  # z, cz


def permutation(gates: Sequence[GateOp], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Gather index src and 0/1 neg (2**n,) of a run: new[j] = (-1)^neg[j] old[src[j]]."""
    k = torch.arange(1 << n, device=device)
    src, neg = k, torch.zeros_like(k)
    for gate in gates:  # every gate is an involution: pi^-1 = pi
        pi, gate_neg = _basis_map(gate.name, gate.qubits, k)
        src, neg = src[pi], neg[pi] if gate_neg is None else neg[pi] ^ gate_neg[pi]
    return src, neg


class _Workspace:
    """Buffers of the in-place path: half a state of scratch, a spare state for gathers."""

    def __init__(self, state: Tensor):
        self.scratch = state.new_empty(max(1, state.numel() // 2))
        self.spare: Tensor | None = None

    def permute(self, state: Tensor, src: Tensor, sign: Tensor | None) -> Tensor:
        """The permuted state, written into the spare buffer (the old state becomes spare)."""
        out = torch.empty_like(state) if self.spare is None else self.spare
        torch.index_select(state, 1, src, out=out)
        if sign is not None:
            out.mul_(sign)
        self.spare = state
        return out


def _redot(x: Tensor, y: Tensor) -> Tensor:
    """Re <x|y> per sample: (B, ...) x (B, ...) -> (B,)."""
    prod = x.conj() * y if x.is_complex() or y.is_complex() else x * y
    return prod.real.flatten(1).sum(1) if prod.is_complex() else prod.flatten(1).sum(1)


# ---------------------------------------------------------------- observables


@dataclass(frozen=True)
class PauliTerm:
    """coeff * P with P = i^ny X^x Z^z (x: qubits with X or Y, z: qubits with Z or Y)."""

    coeff: float
    x: tuple[int, ...]
    z: tuple[int, ...]
    ny: int


Observable = SparsePauliOp | tuple[PauliTerm, ...]  # an operator, or its parsed terms


def pauli_terms(op: Observable, n: int) -> tuple[PauliTerm, ...]:
    """The real-weighted Pauli strings of a Hermitian observable on n qubits."""
    if isinstance(op, tuple):
        return op
    if op.num_qubits != n:
        raise QuantumError(f"observable on {op.num_qubits} qubits for a {n}-qubit state")
    coeffs = op.coeffs * (-1j) ** op.paulis.phase
    terms = []
    for x, z, coeff in zip(op.paulis.x, op.paulis.z, coeffs, strict=True):
        if abs(coeff.imag) > 1e-12:
            raise QuantumError(
                f"observable {op.paulis.to_labels()} has complex coefficient {coeff}"
            )
        ny = int(np.sum(x & z))
        terms.append(PauliTerm(float(coeff.real), _where(x), _where(z), ny))
    return tuple(terms)


def _where(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(q) for q in np.flatnonzero(mask))


def _z_sign(qubits: tuple[int, ...], n: int, like: Tensor) -> Tensor:
    """(-1)^(parity of the bits `qubits` of each basis index): (2**n,) real."""
    index = torch.arange(1 << n, device=like.device)
    parity = torch.zeros_like(index)
    for q in qubits:
        parity ^= (index >> q) & 1
    return (1 - 2 * parity).to(like.real.dtype if like.is_complex() else like.dtype)


def apply_pauli(state: Tensor, term: PauliTerm, n: int) -> Tensor:
    """P |psi> for the Pauli string of `term` (coefficient not applied): (B, 2**n)."""
    out = state * _z_sign(term.z, n, state) if term.z else state
    for q in term.x:
        out = out.view(state.shape[0], 1 << (n - 1 - q), 2, 1 << q).flip(2)
    out = out.reshape(state.shape)
    phase = (1, 1j, -1, -1j)[term.ny % 4]
    return out * phase if phase != 1 else out


def _term_value(state: Tensor, probs: Tensor, term: PauliTerm, n: int) -> Tensor:
    """<psi| P |psi> (real part) per sample: (B,)."""
    if not term.x:
        return probs @ _z_sign(term.z, n, probs) if term.z else probs.sum(1)
    if not state.is_complex() and term.ny % 2:
        return 0.0 * probs.sum(1)  # purely imaginary on a real state (0, kept in the graph)
    return _redot(state, apply_pauli(state, term, n))


def expectation(state: Tensor, observables: Sequence[Observable]) -> Tensor:
    """<psi| O_k |psi> for every sample and observable: (B, 2**n) -> (B, n_obs)."""
    n = state.shape[1].bit_length() - 1
    if state.dim() != 2 or state.shape[1] != 1 << n:
        raise QuantumError(f"state of shape {tuple(state.shape)} is not (B, 2**n)")
    probs = state.real**2 + state.imag**2 if state.is_complex() else state * state  # (B, 2**n)
    columns = [
        sum(t.coeff * _term_value(state, probs, t, n) for t in pauli_terms(op, n))
        for op in observables
    ]
    return torch.stack(columns, dim=1)  # (B, n_obs)


# ---------------------------------------------------------------- compilation


@dataclass(frozen=True)
class GateOp:
    """One gate: its name, qubits, and (rotations) the column of its angle.

    A fused run of permuting gates has the name "perm" and lists them in `gates`.
    """

    name: str
    qubits: tuple[int, ...]
    column: int | None = None  # into [values | bound angles]
    gates: tuple[GateOp, ...] = ()

    @property
    def inverse(self) -> str:
        return _INVERSE.get(self.name, self.name)


def compile_circuit(
    qc: QuantumCircuit, parameters: Sequence[Parameter], *, fuse: bool = True
) -> CompiledCircuit:
    """Gate ops of `qc`; rotation angles are parameters (columns of `values`) or floats.

    fuse: runs of two or more X/Z/CX/CZ/SWAP gates become one permutation op.
    """
    column = {p: k for k, p in enumerate(parameters)}
    if len(column) != len(parameters):
        raise QuantumError("compile_circuit: parameters must be distinct")
    if isinstance(qc.global_phase, ParameterExpression) and qc.global_phase.parameters:
        raise QuantumError(f"parametrised global phase {qc.global_phase} is not supported")
    ops: list[GateOp] = []
    bound: list[float] = []
    for instruction in qc.data:
        name = instruction.operation.name
        qubits = tuple(qc.find_bit(q).index for q in instruction.qubits)
        where = f"gate {name!r} on qubits {qubits}"
        if instruction.clbits or name in ("measure", "reset"):
            raise QuantumError(f"{where}: measurements and classical bits are not supported")
        if name in _NO_OPS:
            continue
        if name not in SUPPORTED:
            raise QuantumError(f"unsupported {where}: supported are {', '.join(SUPPORTED)}")
        if name not in _ROTATIONS:
            ops.append(GateOp(name, qubits))
            continue
        angle = instruction.operation.params[0]
        if isinstance(angle, Parameter):
            if angle not in column:
                raise QuantumError(f"{where}: parameter {angle} is not among the parameters")
            ops.append(GateOp(name, qubits, column[angle]))
            continue
        if isinstance(angle, ParameterExpression) and angle.parameters:
            raise QuantumError(
                f"{where}: angle {angle} is an expression; use one parameter per gate"
            )
        ops.append(GateOp(name, qubits, len(parameters) + len(bound)))
        bound.append(float(angle))
    phase = float(qc.global_phase)
    fused = _fuse(ops) if fuse else tuple(ops)
    return CompiledCircuit(qc.num_qubits, len(parameters), fused, tuple(bound), phase)


def _fuse(ops: list[GateOp]) -> tuple[GateOp, ...]:
    """Runs of two or more permuting gates as one "perm" op each."""
    fused: list[GateOp] = []
    for permuting, run in groupby(ops, key=lambda op: op.name in _PERMUTING):
        run = list(run)
        if permuting and len(run) > 1:
            qubits = tuple(sorted({q for op in run for q in op.qubits}))
            fused.append(GateOp("perm", qubits, gates=tuple(run)))
        else:
            fused.extend(run)
    return tuple(fused)


@dataclass(frozen=True)
class CompiledCircuit:
    """A circuit as gate ops over n qubits, with P parameters and some bound angles."""

    num_qubits: int
    num_parameters: int
    ops: tuple[GateOp, ...]
    bound: tuple[float, ...]  # angles of gates with a fixed angle: columns P, P+1, ...
    global_phase: float = 0.0
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_real(self) -> bool:
        """Every gate real (and no global phase): the state can stay real."""
        return self.global_phase == 0.0 and all(op.name in _REAL for op in self.ops)

    def _check_values(self, values: Tensor) -> None:
        if values.dim() != 2 or values.shape[1] != self.num_parameters:
            raise QuantumError(
                f"values of shape {tuple(values.shape)}: expected (B, {self.num_parameters})"
            )
        if values.is_complex() or not values.is_floating_point():
            raise QuantumError(f"values must be real floating point, got {values.dtype}")

    def _half_angles(self, values: Tensor) -> Pair:
        """cos and sin of half of every angle: (P + n_bound, B, 1, 1) each."""
        self._check_values(values)
        fixed = values.new_tensor(self.bound).expand(values.shape[0], -1)
        half = torch.cat((values, fixed), dim=1).t()[:, :, None, None] / 2  # (P + n_bound, B, 1, 1)
        # exp(i half) in one op: torch runs cos and sin multi-threaded even on tiny
        # tensors, which stalls for milliseconds when the other cores are busy.
        phase = torch.polar(torch.ones_like(half), half)
        return phase.real, phase.imag

    def _initial_state(self, values: Tensor, real: bool | None) -> Tensor:
        """|0...0> for every sample: (B, 2**n), real or complex like `values`."""
        real = self.is_real if real is None else real
        if real and not self.is_real:
            raise QuantumError("circuit has complex gates: it cannot run on a real state")
        dtype = values.dtype if real else values.dtype.to_complex()
        state = values.new_zeros((values.shape[0], 1 << self.num_qubits), dtype=dtype)
        state[:, 0] = 1
        return state

    def _angle(self, op: GateOp, cos: Tensor, sin: Tensor) -> tuple[Tensor | None, Tensor | None]:
        if op.column is None:
            return None, None
        return cos[op.column], sin[op.column]  # (B, 1, 1)

    def _table(self, op: GateOp, like: Tensor, inverse: bool) -> tuple[Tensor, Tensor | None]:
        """Gather index (2**n,) and sign (or None) of a fused permutation, cached."""
        key = (op, like.device, like.dtype, inverse)
        if key not in self._tables:
            src, neg = permutation(op.gates, self.num_qubits, like.device)
            if inverse:  # old[src[j]] = sign[j] new[j]
                inv = torch.empty_like(src)
                inv[src] = torch.arange(src.numel(), device=src.device)
                src, neg = inv, neg[inv]
            real = like.real.dtype if like.is_complex() else like.dtype
            self._tables[key] = src, (1 - 2 * neg).to(real) if bool(neg.any()) else None
        return self._tables[key]

    def _apply(self, state: Tensor, op: GateOp, cos: Tensor, sin: Tensor) -> Tensor:
        """A new state after `op` (autograd path)."""
        if op.gates:
            src, sign = self._table(op, state, inverse=False)
            out = state.index_select(1, src)
            return out if sign is None else out * sign
        return apply_gate(state, self.num_qubits, op.name, op.qubits, *self._angle(op, cos, sin))

    def _apply_(
        self,
        state: Tensor,
        op: GateOp,
        cos: Tensor,
        sin: Tensor,
        workspace: _Workspace,
        inverse: bool = False,
    ) -> Tensor:
        """`op` (or its inverse: pass -sin) applied in place, or into the spare buffer."""
        if op.gates and state.numel() <= _GATHER_MAX:
            return workspace.permute(state, *self._table(op, state, inverse))
        if op.gates:  # no spare state for large ones
            for gate in reversed(op.gates) if inverse else op.gates:
                state = self._apply_(state, gate, cos, sin, workspace, inverse)
            return state
        name = op.inverse if inverse else op.name
        c, s = self._angle(op, cos, sin)
        apply_gate_(state, self.num_qubits, name, op.qubits, c, s, workspace.scratch)
        return state

    def run(self, values: Tensor, *, real: bool | None = None) -> Tensor:
        """States U(values) |0...0>: (B, P) -> (B, 2**n); real=None: real iff is_real.

        Out of place (autograd-ready) when values require grad, else in place.
        """
        cos, sin = self._half_angles(values)
        state = self._initial_state(values, real)  # (B, 2**n)
        if torch.is_grad_enabled() and values.requires_grad:
            for op in self.ops:
                state = self._apply(state, op, cos, sin)
        else:
            workspace = _Workspace(state)
            for op in self.ops:
                state = self._apply_(state, op, cos, sin, workspace)
        if self.global_phase and state.is_complex():
            state = state * complex(math.cos(self.global_phase), math.sin(self.global_phase))
        return state

    def expectations(
        self,
        values: Tensor,
        observables: Sequence[Observable],
        method: Method = "adjoint",
        *,
        real: bool | None = None,
        fast: bool | None = None,
    ) -> Tensor:
        """<O_k> per sample, (B, P) -> (B, n_obs), differentiable w.r.t. values.

        method "adjoint" takes the NumPy fast path (one autograd node, see `fast`) for
        small real circuits on the CPU, unless fast=False or real=False; fast=True
        requires it.
        """
        terms = tuple(pauli_terms(op, self.num_qubits) for op in observables)
        if method == "autograd":
            return expectation(self.run(values, real=real), terms)
        if method != "adjoint":
            raise QuantumError(f"unknown gradient method {method!r} (adjoint or autograd)")
        self._check_values(values)
        path = None if fast is False or real is False else self.fast_path_for(values)
        if path is not None:
            return path.expectations(values, terms)
        if fast:
            raise QuantumError(
                "no fast path here: it needs a real circuit of at most "
                f"{_fast_max_qubits()} qubits, CPU float32/float64 values and a batch "
                "that fits its memory cap"
            )
        return _AdjointExpectation.apply(values, self, terms, real)

    @property
    def fast(self) -> FastCircuit | None:
        """The NumPy fast path (quantum/fastpath.py) of a small real circuit, else None."""
        if "fast" not in self._tables:
            from quantum.fastpath import FAST_MAX_QUBITS, FastCircuit

            small = self.num_qubits <= FAST_MAX_QUBITS
            self._tables["fast"] = FastCircuit(self) if self.is_real and small else None
        return self._tables["fast"]

    def fast_path_for(self, values: Tensor) -> FastCircuit | None:
        """The fast path if `expectations(values, ..., "adjoint")` takes it: CPU float
        values, a batch that fits (FastCircuit.fits)."""
        if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
            return None
        fast = self.fast
        return fast if fast is not None and fast.fits(values.shape[0]) else None

    def adjoint_gradient(self, values: Tensor, state: Tensor, lam: Tensor) -> Tensor:
        """dE/dvalues (B, P) from the final state and lam = dE/dstate (both (B, 2**n)).

        psi and lambda are stacked into one (2B, 2**n) tensor and un-applied together.
        """
        cos, sin = self._half_angles(values)
        grads = torch.zeros_like(values)  # (B, P)
        params = [i for i, op in enumerate(self.ops) if self._is_param(op)]
        if not params:
            return grads
        pair = torch.cat((state, lam.to(state.dtype)))  # (2B, 2**n)
        workspace = _Workspace(pair)
        cos2, sin2 = torch.cat((cos, cos), 1), -torch.cat((sin, sin), 1)  # inverse: -angle
        columns, overlaps = [], []
        for i in range(len(self.ops) - 1, params[0] - 1, -1):
            op = self.ops[i]
            if self._is_param(op):
                columns.append(op.column)
                overlaps.append(self._generator_overlap(pair, op, workspace.scratch))
            if i > params[0]:
                pair = self._apply_(pair, op, cos2, sin2, workspace, inverse=True)
        index = torch.tensor(columns, device=values.device)
        return grads.index_add_(1, index, torch.stack(overlaps, dim=1), alpha=0.5)

    def _is_param(self, op: GateOp) -> bool:
        return op.column is not None and op.column < self.num_parameters

    def _generator_overlap(self, pair: Tensor, op: GateOp, scratch: Tensor) -> Tensor:
        """Re <lambda| (-i P) |psi> per sample for the rotation `op`: (B,)."""
        B, n = pair.shape[0] // 2, self.num_qubits
        psi = _split1(pair[:B], n, op.qubits[0])
        lam = _split1(pair[B:], n, op.qubits[0])
        (i, j, g), *rest = _GENERATOR_TERMS[op.name]
        prod = _scratch(scratch, psi[0])  # sum of g conj(lam_i) psi_j, elementwise
        torch.mul(lam[i].conj(), psi[j], out=prod)
        if not _is_one(g):
            prod.mul_(g)
        for i, j, g in rest:
            prod.addcmul_(lam[i].conj(), psi[j], value=g)
        total = prod.view(B, -1).sum(1)
        return total.real if total.is_complex() else total


def _fast_max_qubits() -> int:
    from quantum.fastpath import FAST_MAX_QUBITS

    return FAST_MAX_QUBITS


class _AdjointExpectation(torch.autograd.Function):
    """expectation(run(values)) with an adjoint-method backward (only the final state kept)."""

    @staticmethod
    def forward(ctx, values, circuit, observables, real):  # (B, P) -> (B, n_obs)
        state = circuit.run(values, real=real)
        ctx.save_for_backward(values)
        ctx.state, ctx.circuit, ctx.observables = state, circuit, observables
        return expectation(state, observables)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # (B, n_obs) -> (B, P)
        (values,) = ctx.saved_tensors
        with torch.enable_grad():
            psi = ctx.state.detach().requires_grad_()
            (lam,) = torch.autograd.grad(expectation(psi, ctx.observables), psi, grad_out)
        return ctx.circuit.adjoint_gradient(values, ctx.state, lam), None, None, None
