"""Error mitigation for the shot-based executors (paper §5.1.2): ZNE, readout, parity.

Three techniques, each a small set of pure functions here; the shot-based
executors (quantum/executors/aer.py, ibm.py) run the extra circuits in the same
batched backend call as the plain ones and post-process with these functions.

Zero-noise extrapolation (ZNE). The noise of a circuit U is scaled by unitary
folding, which leaves the noiseless circuit unchanged:

    global:  U -> U (U^dag U)^k  L^dag L        L = the last gates of U
    local:   G -> G (G^dag G)^k  for every gate G (one more fold for some of them)

so that the number of gates (and of noisy gate applications) grows by a factor
lambda = 1 + 2 * folds / d (d gates). The expectation values E(lambda_j) at the
scale factors lambda_j are extrapolated to lambda = 0:

    richardson:   E(0) = sum_j c_j E(lambda_j), c_j = prod_{i!=j} lambda_i / (lambda_i - lambda_j)
                  (the polynomial of degree m - 1 through the m points)
    linear:       least-squares line E = a + b lambda, E(0) = a
    exponential:  E = a + b exp(-c lambda), E(0) = a + b; a known (the asymptote,
                  0 for a Pauli observable under depolarizing noise: log-linear fit)
                  or fitted (three equally spaced scale factors, closed form)

Readout-error mitigation (tensored). Two calibration circuits prepare |0...0>
and |1...1> and measure <Z_q> on every measured qubit; each qubit's readout
channel maps a +-1 outcome m to a reading of mean a_q m + b_q, with

    a_q = (<Z_q>_0 - <Z_q>_1) / 2 = 1 - P(1|0) - P(0|1),
    b_q = (<Z_q>_0 + <Z_q>_1) / 2 = P(0|1) - P(1|0).

(m' - b_q) / a_q is then an unbiased reading of m, and the product over the
support Q of a Pauli string P gives the unbiased estimator

    <P> = prod_{q in Q} a_q^{-1}  sum_{T subset Q} prod_{q in Q - T} (-b_q) <P_T>_measured

over the measured means of P's sub-strings P_T (`readout_inverse_expansion`);
on a distribution it is the tensor product of the inverse confusion matrices
(`mitigate_distribution`).

Symmetry verification. A circuit that conserves the parity S = Z^{(x) n} keeps
its state in one parity sector s = +-1; noise leaks out of it. Post-selecting
the shots of the right parity (`postselect_parity`) projects with
Pi = (I + s S) / 2, and for an observable O that commutes with S

    <O>_ps = <O Pi> / <Pi> = (<O> + s <O S>) / (1 + s <S>),

two more Pauli strings per term, measured from the same shots (`symmetry_projected`).

Order, when combined: readout correction of every measured string, then the
parity ratio, then the extrapolation over scale factors (`OutputMap`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Literal

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import CircuitInstruction, Gate
from qiskit.quantum_info import SparsePauliOp

from qfl.errors import QuantumError
from quantum.config import Extrapolation, Folding

IGNORED_OPS = frozenset({"barrier"})


# ---------------------------------------------------------------- unitary folding


def _gates(circuit: QuantumCircuit) -> list[CircuitInstruction]:
    """The circuit's gates (barriers skipped); anything non-unitary cannot be folded."""
    gates = []
    for instruction in circuit.data:
        if instruction.operation.name in IGNORED_OPS:
            continue
        if not isinstance(instruction.operation, Gate):
            raise QuantumError(
                f"cannot fold {instruction.operation.name!r}: folding needs a unitary circuit "
                "(measure with the estimator, not in the circuit)"
            )
        gates.append(instruction)
    return gates


def _inverse(instruction: CircuitInstruction) -> CircuitInstruction:
    return instruction.replace(operation=instruction.operation.inverse())


def _folds(num_gates: int, scale: float) -> int:
    """Single-gate folds that bring `num_gates` gates closest to `scale` times as many."""
    if scale < 1.0:
        raise QuantumError(f"scale factor {scale} < 1: folding cannot remove noise")
    return round((scale - 1.0) / 2.0 * num_gates)


def fold_global(circuit: QuantumCircuit, scale: float) -> QuantumCircuit:
    """U (U^dag U)^k L^dag L: `scale` times as many gates (as close as d gates allow)."""
    gates = _gates(circuit)
    d = len(gates)
    folded = circuit.copy_empty_like()
    if d == 0:
        return folded
    full, rest = divmod(_folds(d, scale), d)
    body = list(circuit.data)
    inverse = [_inverse(g) for g in reversed(gates)]
    for instruction in body:
        folded.append(instruction)
    for _ in range(full):
        for instruction in inverse:
            folded.append(instruction)
        for instruction in gates:
            folded.append(instruction)
    if rest:
        tail = gates[d - rest :]
        for instruction in reversed(tail):
            folded.append(_inverse(instruction))
        for instruction in tail:
            folded.append(instruction)
    return folded


def fold_local(circuit: QuantumCircuit, scale: float) -> QuantumCircuit:
    """G -> G (G^dag G)^k for every gate; the remaining folds spread evenly over the gates."""
    gates = _gates(circuit)
    d = len(gates)
    folded = circuit.copy_empty_like()
    if d == 0:
        return folded
    full, rest = divmod(_folds(d, scale), d)
    extra = {int((i + 0.5) * d / rest) for i in range(rest)} if rest else set()
    position = 0
    for instruction in circuit.data:
        folded.append(instruction)
        if instruction.operation.name in IGNORED_OPS:
            continue
        times = full + (position in extra)
        position += 1
        inverse = _inverse(instruction)
        for _ in range(times):
            folded.append(inverse)
            folded.append(instruction)
    return folded


def fold_circuit(
    circuit: QuantumCircuit, scale: float, method: Folding = "global"
) -> QuantumCircuit:
    """The circuit with its noise scaled by `scale` through `method` folding."""
    if method == "global":
        return fold_global(circuit, scale)
    if method == "local":
        return fold_local(circuit, scale)
    raise QuantumError(f"unknown folding {method!r}: use 'global' or 'local'")


def achieved_scale(original: QuantumCircuit, folded: QuantumCircuit) -> float:
    """Gate count of `folded` over that of `original`: the noise scale folding reached."""
    d = len(_gates(original))
    return 1.0 if d == 0 else len(_gates(folded)) / d


# ---------------------------------------------------------------- extrapolation


def richardson_weights(scales: Sequence[float]) -> np.ndarray:
    """c_j with E(0) = sum_j c_j E(lambda_j) for the interpolating polynomial (m,)."""
    lam = np.asarray(scales, dtype=float)
    weights = np.ones(len(lam))
    for j in range(len(lam)):
        for i in range(len(lam)):
            if i != j:
                weights[j] *= lam[i] / (lam[i] - lam[j])
    return weights


def linear_weights(scales: Sequence[float]) -> np.ndarray:
    """w_j with E(0) = sum_j w_j E(lambda_j) for the least-squares line (m,)."""
    lam = np.asarray(scales, dtype=float)
    design = np.stack([np.ones_like(lam), lam], axis=1)  # (m, 2)
    return np.linalg.pinv(design)[0]


def extrapolate(
    values: np.ndarray,
    scales: Sequence[float],
    method: Extrapolation = "richardson",
    asymptote: float | None = 0.0,
) -> np.ndarray:
    """Zero-noise values from values (m, ...) measured at the m scale factors -> (...).

    Exponential fits need every point on one side of the asymptote (and, fitted,
    a decay 0 < q < 1 between equally spaced points); where a point set does not
    allow the fit, the value at the smallest scale factor is returned unchanged.
    """
    y = np.asarray(values, dtype=float)
    lam = np.asarray(scales, dtype=float)
    if y.shape[0] != len(lam):
        raise QuantumError(f"{y.shape[0]} value sets for {len(lam)} scale factors")
    if method == "richardson":
        return np.tensordot(richardson_weights(lam), y, axes=1)
    if method == "linear":
        return np.tensordot(linear_weights(lam), y, axes=1)
    if method != "exponential":
        raise QuantumError(f"unknown extrapolation {method!r}")
    if asymptote is not None:
        return _exponential_known(y, lam, asymptote)
    return _exponential_fitted(y, lam)


def _exponential_known(y: np.ndarray, lam: np.ndarray, asymptote: float) -> np.ndarray:
    """a + b exp(-c lambda) with a known: least squares of log|y - a| against lambda."""
    shifted = y - asymptote  # (m, ...)
    sign = np.sign(shifted[0])
    valid = np.all(shifted * sign > 0, axis=0) & (sign != 0)
    logs = np.log(np.where(valid, np.abs(shifted), 1.0))
    intercept = np.tensordot(linear_weights(lam), logs, axes=1)
    return np.where(valid, asymptote + sign * np.exp(intercept), y[0])


def _exponential_fitted(y: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """a + b q^(lambda / h) through 3 equally spaced points (step h), at lambda = 0."""
    h = lam[1] - lam[0]
    d1, d2 = y[1] - y[0], y[2] - y[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = d2 / d1
        valid = (d1 != 0) & (q > 0) & (q < 1)
        q_safe = np.where(valid, q, 0.5)
        zero = y[0] + d1 / (q_safe - 1.0) * (q_safe ** (-lam[0] / h) - 1.0)
    return np.where(valid, zero, y[0])


# ---------------------------------------------------------------- readout errors


def calibration_circuit(num_qubits: int, qubits: Sequence[int], state: int) -> QuantumCircuit:
    """|0...0> (state 0) or X on each of `qubits` (state 1), on a `num_qubits`-qubit register."""
    qc = QuantumCircuit(num_qubits, name=f"readout_cal_{state}")
    if state:
        for q in qubits:
            qc.x(q)
    return qc


def readout_from_calibration(z0: np.ndarray, z1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per qubit from measured <Z_q> after preparing |0> (z0) and |1> (z1)."""
    z0, z1 = np.asarray(z0, dtype=float), np.asarray(z1, dtype=float)
    return (z0 - z1) / 2.0, (z0 + z1) / 2.0


def confusion_matrices(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, 2, 2) A_q[measured, prepared] of the readout channels (a_q, b_q)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    p10 = (1.0 - a - b) / 2.0  # P(read 1 | prepared 0)
    p01 = (1.0 - a + b) / 2.0  # P(read 0 | prepared 1)
    return np.stack([np.stack([1 - p10, p01], -1), np.stack([p10, 1 - p01], -1)], -2)


def readout_channels(confusions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) per qubit of (n, 2, 2) confusion matrices A_q[measured, prepared]."""
    c = np.asarray(confusions, dtype=float)
    p10, p01 = c[:, 1, 0], c[:, 0, 1]
    return 1.0 - p10 - p01, p01 - p10


def mitigate_distribution(probs: np.ndarray, confusions: np.ndarray) -> np.ndarray:
    """True (quasi-)probabilities (2^n,) from measured ones: (A_{n-1}^-1 (x) ... (x) A_0^-1) p.

    Index bit q of an outcome is qubit q (qiskit order); the result may have small
    negative entries (a quasi-distribution) when `probs` carries shot noise.
    """
    c = np.asarray(confusions, dtype=float)
    n = len(c)
    p = np.asarray(probs, dtype=float)
    if p.shape != (2**n,):
        raise QuantumError(f"a distribution over {n} qubits has 2^{n} entries, got {p.shape}")
    tensor = p.reshape((2,) * n)  # axis k is qubit n - 1 - k
    for q in range(n):
        axis = n - 1 - q
        tensor = np.moveaxis(np.tensordot(np.linalg.inv(c[q]), tensor, axes=([1], [axis])), 0, axis)
    return tensor.reshape(-1)


def readout_inverse_expansion(label: str, a: np.ndarray, b: np.ndarray) -> list[tuple[str, float]]:
    """<P> as sum_j w_j <P_j>_measured over P's sub-strings: the tensored readout inverse."""
    n = len(label)
    support = [q for q in range(n) if label[n - 1 - q] != "I"]
    if any(abs(a[q]) < 1e-12 for q in support):
        raise QuantumError(f"readout of {label} is uninvertible (a qubit reads at random)")
    scale = 1.0 / float(np.prod([a[q] for q in support]))
    terms = []
    for kept in product((True, False), repeat=len(support)):
        weight = scale * float(
            np.prod([1.0 if k else -b[q] for q, k in zip(support, kept, strict=True)])
        )
        if weight == 0.0:
            continue
        chars = list(label)
        for q, k in zip(support, kept, strict=True):
            if not k:
                chars[n - 1 - q] = "I"
        terms.append(("".join(chars), weight))
    return terms


def substrings(label: str) -> list[str]:
    """Every Pauli string obtained from `label` by replacing some of its letters with I."""
    n = len(label)
    support = [i for i, c in enumerate(label) if c != "I"]
    out = []
    for kept in product((True, False), repeat=len(support)):
        chars = ["I"] * n
        for i, k in zip(support, kept, strict=True):
            if k:
                chars[i] = label[i]
        out.append("".join(chars))
    return out


# ---------------------------------------------------------------- parity symmetry


def bit_parity(bitstring: str) -> int:
    """0 for an even number of 1s, 1 for odd (spaces between registers are ignored)."""
    return bitstring.replace(" ", "").count("1") % 2


def postselect_parity(
    counts: Mapping[str, int], parity: Literal["even", "odd"] = "even"
) -> dict[str, int]:
    """The counts of the outcomes of the expected parity; the others are discarded."""
    keep = 0 if parity == "even" else 1
    return {k: v for k, v in counts.items() if bit_parity(k) == keep}


def parity_operator(num_qubits: int, qubits: Sequence[int] | None = None) -> SparsePauliOp:
    """S = prod Z_q over `qubits` (all by default) on a `num_qubits`-qubit register."""
    qubits = range(num_qubits) if qubits is None else qubits
    return SparsePauliOp.from_sparse_list([("Z" * len(qubits), list(qubits), 1.0)], num_qubits)


def commutes(op: SparsePauliOp, other: SparsePauliOp) -> bool:
    """Whether every term of `op` commutes with every term of `other`."""
    return all(bool(np.all(op.paulis.commutes(p))) for p in other.paulis)


def symmetry_projected(
    op: SparsePauliOp, symmetry: SparsePauliOp, sector: int
) -> tuple[SparsePauliOp, SparsePauliOp]:
    """(O Pi, Pi) with Pi = (I + s S) / 2: <O>_postselected = <O Pi> / <Pi>."""
    if sector not in (1, -1):
        raise QuantumError(f"a parity sector is +1 or -1, got {sector}")
    if not commutes(op, symmetry):
        raise QuantumError(f"observable {op} does not commute with the symmetry {symmetry}")
    identity = SparsePauliOp("I" * op.num_qubits)
    projector = ((identity + sector * symmetry) * 0.5).simplify()
    return op.dot(projector).simplify(), projector


# ---------------------------------------------------------------- outputs from measured strings


@dataclass(frozen=True)
class OutputMap:
    """Outputs (rows, O) from estimates (rows, R) of measured Pauli strings.

    out = (raw @ num) / (raw @ den) with parity post-selection (den not None),
    raw @ num otherwise. `labels` are the strings to measure, in raw's column order.
    """

    labels: tuple[str, ...]
    num: np.ndarray  # (R, O)
    den: np.ndarray | None  # (R,)

    @property
    def observables(self) -> tuple[SparsePauliOp, ...]:
        return tuple(SparsePauliOp(label) for label in self.labels)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(rows, R) -> (rows, O); a post-selection that kept (almost) nothing gives <O>."""
        numerator = raw @ self.num  # (rows, O)
        if self.den is None:
            return numerator
        kept = raw @ self.den  # (rows,) estimated probability of the right sector
        ok = kept > 1e-3
        return np.where(ok[:, None], numerator / np.where(ok, kept, 1.0)[:, None], numerator)


def output_map(
    observables: Sequence[SparsePauliOp],
    *,
    symmetry: SparsePauliOp | None = None,
    sector: int = 1,
    readout: bool = False,
) -> OutputMap:
    """The strings to measure for `observables` (post-selected on `symmetry` if given).

    With `readout`, every sub-string of a measured string is measured too, so that
    `calibrate` can later apply the readout inverse; until then the map ignores them.
    """
    columns: list[SparsePauliOp] = []  # numerator of each output
    den_op = None
    for op in observables:
        if symmetry is None:
            columns.append(op)
        else:
            numerator, den_op = symmetry_projected(op, symmetry, sector)
            columns.append(numerator)
    index: dict[str, int] = {}
    entries: list[tuple[str, int, float]] = []
    for k, op in enumerate(columns):
        for label, coeff in op.simplify().to_list():
            if abs(coeff.imag) > 1e-12:
                raise QuantumError(f"observable term {label} has a complex coefficient {coeff}")
            if abs(coeff) > 0:
                entries.append((label, k, float(coeff.real)))
                index.setdefault(label, len(index))
    den_entries: list[tuple[str, float]] = []
    if den_op is not None:
        for label, coeff in den_op.to_list():
            den_entries.append((label, float(coeff.real)))
            index.setdefault(label, len(index))
    if readout:
        for label in list(index):
            for sub in substrings(label):
                index.setdefault(sub, len(index))
    labels = tuple(index)
    num = np.zeros((len(labels), len(columns)))
    for label, k, coeff in entries:
        num[index[label], k] += coeff
    den = None
    if den_op is not None:
        den = np.zeros(len(labels))
        for label, coeff in den_entries:
            den[index[label]] += coeff
    return OutputMap(labels, num, den)


def calibrate(output: OutputMap, a: np.ndarray, b: np.ndarray) -> OutputMap:
    """`output` with the readout inverse of channels (a, b) folded into num and den.

    Each measured string's corrected mean is sum_T w_T raw_T over its sub-strings
    (which `output_map(readout=True)` put among the labels).
    """
    index = {label: r for r, label in enumerate(output.labels)}
    correction = np.zeros((len(index), len(index)))  # (raw R, corrected R)
    for label, r in index.items():
        for sub, weight in readout_inverse_expansion(label, a, b):
            if sub not in index:
                raise QuantumError(f"sub-string {sub} of {label} is not measured")
            correction[index[sub], r] += weight
    den = None if output.den is None else correction @ output.den
    return OutputMap(output.labels, correction @ output.num, den)


def observable_bounds(observables: Sequence[SparsePauliOp]) -> np.ndarray:
    """(O,) sum |c| of each observable: |<O>| can never exceed it."""
    return np.array([float(np.abs(op.coeffs).sum()) for op in observables])


def measurement_settings(labels: Sequence[str]) -> int:
    """Circuits needed to measure `labels` (qubit-wise commuting sets; identity is free)."""
    measured = [label for label in labels if set(label) != {"I"}]
    if not measured:
        return 0
    return len(SparsePauliOp(measured).group_commuting(qubit_wise=True))


def check_scales(scales: Sequence[float]) -> None:
    """Raise unless the scale factors are distinct and finite (they index the extrapolation)."""
    if len(set(scales)) != len(scales) or not all(math.isfinite(s) for s in scales):
        raise QuantumError(f"scale factors {list(scales)} must be distinct and finite")
