"""The torch statevector against qiskit's Statevector, and its gradients against each other."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector

from qfl.errors import QuantumError
from quantum import statevector
from quantum.circuits import build_circuit
from quantum.config import CircuitConfig
from quantum.statevector import compile_circuit, expectation

ROTATIONS = ("rx", "ry", "rz")
FIXED = ("h", "x", "y", "z", "s", "sdg")
TWO_QUBIT = ("cx", "cz", "swap")
REAL_ONE_QUBIT = ("ry", "h", "x", "z")


def random_circuit(
    rng: np.random.Generator, n: int, n_gates: int, *, real: bool = False
) -> tuple[QuantumCircuit, list[Parameter]]:
    """n_gates random gates; rotations take a fresh parameter, a reused one, or a float."""
    qc, params = QuantumCircuit(n), []
    one_qubit = REAL_ONE_QUBIT if real else ROTATIONS + FIXED
    names = one_qubit + (TWO_QUBIT if n > 1 else ())
    for _ in range(n_gates):
        name = str(rng.choice(names))
        if name in TWO_QUBIT:
            a, b = rng.choice(n, size=2, replace=False)
            getattr(qc, name)(int(a), int(b))
        elif name in ROTATIONS:
            draw = rng.random()
            if draw < 0.25:
                angle = float(rng.uniform(-2 * math.pi, 2 * math.pi))
            elif draw < 0.35 and params:
                angle = params[int(rng.integers(len(params)))]
            else:
                angle = Parameter(f"p{len(params)}")
                params.append(angle)
            getattr(qc, name)(angle, int(rng.integers(n)))
        else:
            getattr(qc, name)(int(rng.integers(n)))
    if not params:  # at least one parameter, so that there is a gradient
        params.append(Parameter("p0"))
        qc.ry(params[0], int(rng.integers(n)))
    return qc, params


def random_observables(rng: np.random.Generator, n: int, count: int = 3) -> list[SparsePauliOp]:
    """Sums of 1-3 random Pauli strings (X and Y included) with real coefficients."""
    ops = []
    for _ in range(count):
        labels = ["".join(rng.choice(list("IXYZ"), size=n)) for _ in range(rng.integers(1, 4))]
        ops.append(SparsePauliOp(labels, rng.normal(size=len(labels))))
    return ops


def reference(qc: QuantumCircuit, params: list[Parameter], row: np.ndarray) -> Statevector:
    return Statevector(qc.assign_parameters(dict(zip(params, row, strict=True))))


def case(seed: int, *, real: bool = False):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    qc, params = random_circuit(rng, n, int(rng.integers(5, 31)), real=real)
    values = rng.uniform(-math.pi, math.pi, size=(3, len(params)))
    return rng, qc, params, values


@pytest.mark.parametrize("seed", range(50))
def test_statevector_matches_qiskit(seed):
    _, qc, params, values = case(seed)
    state = compile_circuit(qc, params).run(torch.tensor(values))  # (B, 2**n)
    assert state.shape == (3, 2**qc.num_qubits)
    for b, row in enumerate(values):
        np.testing.assert_allclose(state[b].numpy(), reference(qc, params, row).data, atol=1e-6)


@pytest.mark.parametrize("seed", range(50))
def test_expectations_match_qiskit(seed):
    rng, qc, params, values = case(seed)
    observables = random_observables(rng, qc.num_qubits)
    compiled = compile_circuit(qc, params)
    for method, fast in (("adjoint", None), ("adjoint", False), ("autograd", None)):
        got = compiled.expectations(torch.tensor(values), observables, method, fast=fast).numpy()
        for b, row in enumerate(values):
            sv = reference(qc, params, row)
            want = [sv.expectation_value(op).real for op in observables]
            np.testing.assert_allclose(got[b], want, atol=1e-6)


@pytest.mark.parametrize("seed", range(10))
def test_real_path_equals_complex_path(seed):
    rng, qc, params, values = case(seed, real=True)
    compiled = compile_circuit(qc, params)
    assert compiled.is_real
    v = torch.tensor(values)
    real, cplx = compiled.run(v), compiled.run(v, real=False)
    assert real.dtype == torch.float64 and cplx.dtype == torch.complex128
    np.testing.assert_allclose(real.numpy(), cplx.numpy(), atol=1e-12)
    observables = random_observables(rng, qc.num_qubits)  # odd-Y terms vanish on both paths
    np.testing.assert_allclose(
        expectation(real, observables).numpy(), expectation(cplx, observables).numpy(), atol=1e-12
    )


@pytest.mark.parametrize(
    ("gate", "real"),
    [("ry", True), ("h", True), ("x", True), ("z", True), ("cx", True), ("cz", True)]
    + [("swap", True), ("rx", False), ("rz", False), ("y", False), ("s", False), ("sdg", False)],
)
def test_is_real_only_for_real_gates(gate, real):
    qc = QuantumCircuit(2)
    qc.ry(0.3, 0)
    if gate in TWO_QUBIT:
        getattr(qc, gate)(0, 1)
    elif gate in ROTATIONS:
        getattr(qc, gate)(0.2, 1)
    else:
        getattr(qc, gate)(1)
    compiled = compile_circuit(qc, [])
    assert compiled.is_real is real
    state = compiled.run(torch.zeros(2, 0, dtype=torch.float64))
    assert state.is_complex() is not real
    np.testing.assert_allclose(state[0].numpy(), Statevector(qc).data, atol=1e-12)


def test_inplace_and_autograd_forward_agree():
    _, qc, params, values = case(7)
    compiled = compile_circuit(qc, params)
    plain = compiled.run(torch.tensor(values))
    tracked = compiled.run(torch.tensor(values, requires_grad=True))
    assert tracked.requires_grad and not plain.requires_grad
    np.testing.assert_allclose(plain.numpy(), tracked.detach().numpy(), atol=1e-14)


@pytest.mark.parametrize("seed", range(10))
def test_fused_permutations_match_gate_by_gate(seed, monkeypatch):
    rng, qc, params, values = case(200 + seed, real=seed % 2 == 0)
    run = ("cz", "x", "swap", "z", "cx") if qc.num_qubits > 1 else ("x", "z")
    for name in run:  # one run of permuting gates at least
        getattr(qc, name)(*((0, 1) if name in TWO_QUBIT else (0,)))
    observables = random_observables(rng, qc.num_qubits, count=2)
    weights = torch.tensor(rng.normal(size=(3, 2)))
    fused, plain = compile_circuit(qc, params), compile_circuit(qc, params, fuse=False)
    assert any(op.name == "perm" for op in fused.ops)
    assert not any(op.name == "perm" for op in plain.ops)
    want = plain.run(torch.tensor(values)).numpy()
    np.testing.assert_allclose(fused.run(torch.tensor(values)).numpy(), want, atol=1e-12)
    tracked = fused.run(torch.tensor(values, requires_grad=True))
    np.testing.assert_allclose(tracked.detach().numpy(), want, atol=1e-12)
    grad = _gradients(plain, values, observables, weights, "autograd")
    for fast in (None, False):
        np.testing.assert_allclose(
            _gradients(fused, values, observables, weights, "adjoint", fast), grad, atol=1e-10
        )
    monkeypatch.setattr(statevector, "_GATHER_MAX", 0)  # as for states too large to gather
    np.testing.assert_allclose(fused.run(torch.tensor(values)).numpy(), want, atol=1e-12)
    np.testing.assert_allclose(
        _gradients(fused, values, observables, weights, "adjoint", False), grad, atol=1e-10
    )


def test_float32_keeps_its_dtype_and_matches_float64():
    _, qc, params, values = case(3, real=True)
    compiled = compile_circuit(qc, params)
    single = compiled.run(torch.tensor(values, dtype=torch.float32))
    double = compiled.run(torch.tensor(values))
    assert single.dtype == torch.float32
    np.testing.assert_allclose(single.numpy(), double.numpy(), atol=1e-6)
    assert compiled.run(torch.tensor(values, dtype=torch.float32), real=False).dtype == (
        torch.complex64
    )


def test_global_phase_is_applied():
    qc = QuantumCircuit(2, global_phase=0.7)
    qc.h(0)
    qc.rz(0.4, 1)
    state = compile_circuit(qc, []).run(torch.zeros(1, 0, dtype=torch.float64))
    np.testing.assert_allclose(state[0].numpy(), Statevector(qc).data, atol=1e-12)


def _t(qc, p):
    qc.t(0)


def _u(qc, p):
    qc.u(0.1, 0.2, 0.3, 0)


def _expression(qc, p):
    qc.ry(2 * p, 0)


def _measure(qc, p):
    qc.measure_all()


def _stranger(qc, p):
    qc.rx(Parameter("stranger"), 0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (_t, "unsupported gate 't' on qubits \\(0,\\)"),
        (_u, "unsupported gate 'u'"),
        (_expression, "gate 'ry'.*expression"),
        (_measure, "gate 'measure'"),
        (_stranger, "gate 'rx'.*stranger"),
    ],
)
def test_unsupported_circuits_raise_naming_the_gate(build, message):
    p = Parameter("p")
    qc = QuantumCircuit(2)
    qc.ry(p, 1)
    build(qc, p)
    with pytest.raises(QuantumError, match=message):
        compile_circuit(qc, [p])


def test_bad_values_and_observables_raise():
    p = Parameter("p")
    qc = QuantumCircuit(2)
    qc.rx(p, 0)
    compiled = compile_circuit(qc, [p])
    with pytest.raises(QuantumError, match="expected \\(B, 1\\)"):
        compiled.run(torch.zeros(3, 2))
    state = compiled.run(torch.zeros(1, 1))
    with pytest.raises(QuantumError, match="complex coefficient"):
        expectation(state, [SparsePauliOp(["XZ"], [1j])])
    with pytest.raises(QuantumError, match="3 qubits"):
        expectation(state, [SparsePauliOp("ZZZ")])
    with pytest.raises(QuantumError, match="unknown gradient method"):
        compiled.expectations(torch.zeros(1, 1), [SparsePauliOp("ZZ")], method="magic")


def _gradients(compiled, values, observables, weights, method, fast=None):
    v = torch.tensor(values, requires_grad=True)
    out = compiled.expectations(v, observables, method, fast=fast)  # (B, n_obs)
    (grad,) = torch.autograd.grad((out * weights).sum(), v)
    return grad.numpy()


@pytest.mark.parametrize("fast", [None, False])  # real circuits: NumPy fast path or torch
@pytest.mark.parametrize("real", [True, False])
@pytest.mark.parametrize("seed", range(12))
def test_adjoint_gradients_equal_autograd(seed, real, fast):
    rng, qc, params, values = case(100 + seed, real=real)
    compiled = compile_circuit(qc, params)
    assert (compiled.fast is not None) is real
    observables = random_observables(rng, qc.num_qubits, count=2)
    weights = torch.tensor(rng.normal(size=(3, 2)))
    adjoint = _gradients(compiled, values, observables, weights, "adjoint", fast)
    autograd = _gradients(compiled, values, observables, weights, "autograd")
    np.testing.assert_allclose(adjoint, autograd, atol=1e-10)


def test_adjoint_gradient_of_unused_parameter_is_zero():
    p, unused = Parameter("p"), Parameter("unused")
    qc = QuantumCircuit(1)
    qc.h(0)
    qc.ry(p, 0)
    grad = _gradients(
        compile_circuit(qc, [unused, p]),
        np.array([[0.3, 0.5]]),
        [SparsePauliOp("X")],
        1.0,
        "adjoint",
    )
    np.testing.assert_allclose(grad, [[0.0, -math.sin(0.5)]], atol=1e-12)


@pytest.mark.parametrize(
    "config",
    [
        CircuitConfig(qubits=3, layers=2, reupload=True, entanglement="ring"),
        CircuitConfig(qubits=3, layers=2, reupload=True, encoding="rx", entanglement="full"),
        CircuitConfig(qubits=4, layers=1, observables=("XYZI", "ZZII", "IIXX")),
    ],
)
def test_gradients_follow_the_parameter_shift_rule(config):
    circuit = build_circuit(config)
    params = [*circuit.slots, *circuit.weights]
    compiled = compile_circuit(circuit.circuit, params)
    rng = np.random.default_rng(5)
    values = rng.uniform(-math.pi, math.pi, size=(2, len(params)))  # (B, P)
    v = torch.tensor(values, requires_grad=True)
    out = compiled.expectations(v, circuit.observables, "autograd")  # (B, O)
    rows = [
        torch.autograd.grad(out[:, k].sum(), v, retain_graph=True)[0] for k in range(len(out.T))
    ]
    jac = torch.stack(rows, dim=1).numpy()  # (B, O, P)
    shift = np.eye(len(params)) * math.pi / 2  # (P, P)
    plus = values[:, None, :] + shift  # (B, P, P): row p shifts parameter p
    minus = values[:, None, :] - shift
    batch = torch.tensor(np.concatenate([plus, minus]).reshape(-1, len(params)))
    shifted = compiled.expectations(batch, circuit.observables).numpy()
    shifted = shifted.reshape(2, 2, len(params), -1)  # (+/-, B, P, O)
    rule = (shifted[0] - shifted[1]) / 2  # (B, P, O), Eq. 5
    np.testing.assert_allclose(jac, rule.transpose(0, 2, 1), atol=1e-5)
