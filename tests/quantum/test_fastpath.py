"""The NumPy fast path against the torch paths: values, gradients, dtypes, and when it is taken."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector

from qfl.errors import QuantumError
from quantum import fastpath
from quantum.circuits import build_circuit
from quantum.config import CircuitConfig
from quantum.executors.exact import ExactExecutor
from quantum.fastpath import FAST_MAX_QUBITS
from quantum.statevector import compile_circuit

REAL_ONE_QUBIT = ("ry", "ry", "ry", "h", "x", "z")
TWO_QUBIT = ("cx", "cz", "swap")


def random_real_circuit(
    rng: np.random.Generator, n: int, n_gates: int
) -> tuple[QuantumCircuit, list[Parameter]]:
    """Random real gates; an RY takes a fresh parameter, a reused one, or a float."""
    qc, params = QuantumCircuit(n), [Parameter("p0")]
    qc.ry(params[0], int(rng.integers(n)))
    names = REAL_ONE_QUBIT + (TWO_QUBIT if n > 1 else ())
    for _ in range(n_gates):
        name = str(rng.choice(names))
        if name in TWO_QUBIT:
            a, b = rng.choice(n, size=2, replace=False)
            getattr(qc, name)(int(a), int(b))
        elif name == "ry":
            draw = rng.random()
            if draw < 0.2:
                angle = float(rng.uniform(-2 * math.pi, 2 * math.pi))
            elif draw < 0.35:
                angle = params[int(rng.integers(len(params)))]
            else:
                angle = Parameter(f"p{len(params)}")
                params.append(angle)
            qc.ry(angle, int(rng.integers(n)))
        else:
            getattr(qc, name)(int(rng.integers(n)))
    return qc, params


def random_observables(rng: np.random.Generator, n: int, count: int) -> list[SparsePauliOp]:
    """Sums of 1-3 Pauli strings (Y included: odd-Y terms vanish on a real state)."""
    ops = []
    for _ in range(count):
        labels = ["".join(rng.choice(list("IXYZ"), size=n)) for _ in range(rng.integers(1, 4))]
        ops.append(SparsePauliOp(labels, rng.normal(size=len(labels))))
    return ops


def values_and_grads(compiled, values, observables, weights, method="adjoint", fast=None):
    v = torch.tensor(values, requires_grad=True)
    out = compiled.expectations(v, observables, method, fast=fast)  # (B, O)
    (grad,) = torch.autograd.grad((out * weights).sum(), v)
    return out.detach().numpy(), grad.numpy(), out


@pytest.mark.parametrize("batch", [1, 33])
@pytest.mark.parametrize("seed", range(20))
def test_fast_path_equals_the_torch_paths_on_random_real_circuits(seed, batch):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 8))
    qc, params = random_real_circuit(rng, n, int(rng.integers(1, 40)))
    compiled = compile_circuit(qc, params)
    assert compiled.fast is not None
    observables = random_observables(rng, n, count=3)
    values = rng.uniform(-math.pi, math.pi, size=(batch, len(params)))
    weights = torch.tensor(rng.normal(size=(batch, 3)))
    got, grad, out = values_and_grads(compiled, values, observables, weights, fast=True)
    assert out.grad_fn.name() == "_FastExpectationBackward"
    for method, fast in (("adjoint", False), ("autograd", None)):
        want, want_grad, _ = values_and_grads(compiled, values, observables, weights, method, fast)
        np.testing.assert_allclose(got, want, atol=1e-10)
        np.testing.assert_allclose(grad, want_grad, atol=1e-10)
    sv = Statevector(qc.assign_parameters(dict(zip(params, values[0], strict=True))))
    np.testing.assert_allclose(
        got[0], [sv.expectation_value(op).real for op in observables], atol=1e-10
    )


CONFIGS = [
    CircuitConfig(qubits=4, layers=3, reupload=True, entanglement="ring"),
    CircuitConfig(qubits=5, layers=2, reupload=True, entanglement="full", observables="z"),
    CircuitConfig(
        qubits=6,
        layers=2,
        reupload=True,
        entanglement="linear",
        observables=("IIIIIZ", "ZZIIII", "XIIIIX", "IZIXIY"),
    ),
    CircuitConfig(qubits=8, layers=3, entanglement="linear", observables=("IIIIIIIZ",)),
]


def executor_results(executor: ExactExecutor, inputs, weights, mix):
    """torch_forward outputs and gradients (inputs, weights), then the Jacobians."""
    x = torch.tensor(inputs, requires_grad=True)
    w = torch.tensor(weights, requires_grad=True)
    out = executor.torch_forward(x, w)  # (B, O)
    (out * mix).sum().backward()
    d_x, d_w = executor.jacobians(inputs, weights)  # per-sample weight rows, O backwards
    return out, [out.detach().numpy(), x.grad.numpy(), w.grad.numpy(), d_x, d_w]


@pytest.mark.parametrize("batch", [1, 33])
@pytest.mark.parametrize("config", CONFIGS)
def test_fast_executor_equals_the_torch_executors(config, batch):
    circuit = build_circuit(config)
    rng = np.random.default_rng(batch)
    inputs = rng.uniform(-math.pi, math.pi, size=(batch, circuit.num_features))
    weights = rng.uniform(-math.pi, math.pi, size=circuit.num_weights)
    mix = torch.tensor(rng.normal(size=(batch, circuit.num_outputs)))
    fast = ExactExecutor(circuit)
    assert fast.fast_path is not None
    out, got = executor_results(fast, inputs, weights, mix)
    assert out.grad_fn.name() == "_FastForwardBackward"
    for torch_executor in (
        ExactExecutor(circuit, fast=False),
        ExactExecutor(circuit, method="autograd"),
    ):
        assert torch_executor.fast_path is None
        out, want = executor_results(torch_executor, inputs, weights, mix)
        assert "Fast" not in out.grad_fn.name()
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-10)


def test_q1_circuit_takes_the_fast_path():
    """benchmarks/qnn_exact.py: 8 qubits, 3 layers, linear CNOTs, Z on qubit 0."""
    circuit = build_circuit(
        CircuitConfig(qubits=8, layers=3, entanglement="linear", observables=("IIIIIIIZ",))
    )
    executor = ExactExecutor(circuit, dtype=torch.float64)
    fast = executor.fast_path
    assert fast is not None and fast is executor.compiled.fast
    assert fast.num_blocks == 3  # [encoding + layer 1], layer 2, layer 3; CNOT chains between
    assert [kind for kind, _ in fast.steps] == ["block", "perm"] * 3
    w = torch.zeros(circuit.num_weights, requires_grad=True)
    out = executor.torch_forward(torch.zeros(32, 8, dtype=torch.float64), w)
    assert out.grad_fn.name() == "_FastForwardBackward"
    out.sum().backward()
    assert w.grad.shape == (circuit.num_weights,)


def test_float32_keeps_its_dtype_and_matches_float64():
    rng = np.random.default_rng(3)
    qc, params = random_real_circuit(rng, 6, 40)
    compiled = compile_circuit(qc, params)
    observables = random_observables(rng, 6, count=2)
    values = rng.uniform(-math.pi, math.pi, size=(5, len(params)))
    weights = rng.normal(size=(5, 2))
    single = values_and_grads(
        compiled, values.astype(np.float32), observables, torch.tensor(weights).float()
    )
    double = values_and_grads(compiled, values, observables, torch.tensor(weights))
    assert single[2].dtype == torch.float32 and single[1].dtype == np.float32
    assert single[2].grad_fn.name() == "_FastExpectationBackward"
    np.testing.assert_allclose(single[0], double[0], atol=1e-5)
    np.testing.assert_allclose(single[1], double[1], atol=1e-5)


def test_float32_executor_on_float64_inputs_and_back():
    circuit = build_circuit(CircuitConfig(qubits=4, layers=2, reupload=True))
    inputs = torch.rand(3, 4, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(circuit.num_weights, dtype=torch.float32, requires_grad=True)
    out = ExactExecutor(circuit, dtype=torch.float32).torch_forward(inputs, weights)
    assert out.dtype == torch.float64 and out.grad_fn.name() == "_FastForwardBackward"
    out.sum().backward()
    assert inputs.grad.dtype == torch.float64 and weights.grad.dtype == torch.float32
    x, w = inputs.detach().clone().requires_grad_(), weights.detach().double().requires_grad_()
    ExactExecutor(circuit).torch_forward(x, w).sum().backward()
    np.testing.assert_allclose(inputs.grad.numpy(), x.grad.numpy(), atol=1e-5)
    np.testing.assert_allclose(weights.grad.numpy(), w.grad.numpy(), atol=1e-5)


def test_fixed_gates_between_rotations_on_one_qubit():
    """H, X and Z inside a block flip the sign of the gradient of the rotations before them."""
    a, b, c = Parameter("a"), Parameter("b"), Parameter("c")
    qc = QuantumCircuit(3)
    qc.x(2)  # a permutation before the first block
    qc.ry(a, 0)
    qc.h(0)
    qc.ry(b, 0)
    qc.ry(a, 1)  # a reused parameter
    qc.z(0)
    qc.ry(0.4, 0)  # a bound angle, merged with c below
    qc.ry(c, 0)
    qc.cx(0, 1)
    qc.h(2)
    qc.ry(b, 2)
    compiled = compile_circuit(qc, [a, b, c])
    observables = [SparsePauliOp(["ZZI", "XII", "IXX"], [1.0, -0.5, 0.3]), SparsePauliOp("YYI")]
    values = np.random.default_rng(0).uniform(-3, 3, size=(4, 3))
    weights = torch.tensor([[1.0, 2.0]] * 4, dtype=torch.float64)
    got = values_and_grads(compiled, values, observables, weights, fast=True)
    want = values_and_grads(compiled, values, observables, weights, "autograd")
    np.testing.assert_allclose(got[0], want[0], atol=1e-12)
    np.testing.assert_allclose(got[1], want[1], atol=1e-12)


def test_circuits_without_parameters_or_gates():
    p = Parameter("p")
    empty = compile_circuit(QuantumCircuit(2), [p])  # p unused, no gates at all
    fixed = QuantumCircuit(2)
    fixed.h(0)
    fixed.cx(0, 1)
    for compiled, want in ((empty, [1.0, 0.0]), (compile_circuit(fixed, [p]), [1.0, 1.0])):
        _, grad, out = values_and_grads(
            compiled, np.zeros((2, 1)), [SparsePauliOp("ZZ"), SparsePauliOp("XX")], 1.0, fast=True
        )
        np.testing.assert_allclose(out.detach().numpy(), [want, want], atol=1e-12)
        np.testing.assert_allclose(grad, 0.0)


def test_when_the_fast_path_is_not_taken():
    p = Parameter("p")
    qc = QuantumCircuit(2)
    qc.rx(p, 0)  # complex
    compiled = compile_circuit(qc, [p])
    assert compiled.fast is None
    values = torch.zeros(2, 1, requires_grad=True)
    out = compiled.expectations(values, [SparsePauliOp("ZZ")])
    assert out.grad_fn.name() == "_AdjointExpectationBackward"
    with pytest.raises(QuantumError, match="no fast path"):
        compiled.expectations(values, [SparsePauliOp("ZZ")], fast=True)
    large = build_circuit(CircuitConfig(qubits=FAST_MAX_QUBITS + 1, layers=1))
    assert compile_circuit(large.circuit, [*large.slots, *large.weights]).fast is None
    assert ExactExecutor(large).fast_path is None
    real = QuantumCircuit(2)
    real.ry(p, 0)
    compiled = compile_circuit(real, [p])
    assert compiled.fast is not None
    for kwargs in ({"real": False}, {"fast": False}):
        out = compiled.expectations(values, [SparsePauliOp("ZZ")], **kwargs)
        assert out.grad_fn.name() == "_AdjointExpectationBackward"
    out = compiled.expectations(values, [SparsePauliOp("ZZ")], "autograd")
    assert "Fast" not in out.grad_fn.name()
    with pytest.raises(QuantumError, match="expected \\(B, 1\\)"):
        compiled.expectations(torch.zeros(2, 3), [SparsePauliOp("ZZ")])
    circuit = build_circuit(CircuitConfig(qubits=2, layers=1, encoding="rx"))
    assert ExactExecutor(circuit).fast_path is None


def test_no_grad_forward_and_repeated_backward():
    circuit = build_circuit(CircuitConfig(qubits=5, layers=2))
    executor = ExactExecutor(circuit)
    rng = np.random.default_rng(1)
    inputs = rng.uniform(-3, 3, size=(4, 5))
    weights = rng.uniform(-3, 3, size=circuit.num_weights)
    plain = executor.expectations(inputs, weights)  # under no_grad
    x, w = torch.tensor(inputs), torch.tensor(weights, requires_grad=True)
    out = executor.torch_forward(x, w)
    np.testing.assert_allclose(out.detach().numpy(), plain, atol=1e-14)
    (first,) = torch.autograd.grad(out.sum(), w, retain_graph=True)
    (second,) = torch.autograd.grad(out.sum(), w)
    np.testing.assert_array_equal(first.numpy(), second.numpy())


def test_batches_too_large_for_the_fast_path_take_the_torch_path(monkeypatch):
    circuit = build_circuit(CircuitConfig(qubits=3, layers=2))  # 2 blocks of 8 amplitudes
    executor = ExactExecutor(circuit)
    monkeypatch.setattr(fastpath, "FAST_MAX_ELEMENTS", 4 * 8 * 2)
    weights = torch.zeros(circuit.num_weights, requires_grad=True)
    small = executor.torch_forward(torch.zeros(4, 3), weights)
    large = executor.torch_forward(torch.zeros(5, 3), weights)
    assert small.grad_fn.name() == "_FastForwardBackward"
    assert "Fast" not in large.grad_fn.name()
    values = torch.zeros(5, executor.compiled.num_parameters, requires_grad=True)
    out = executor.compiled.expectations(values, circuit.observables)
    assert out.grad_fn.name() == "_AdjointExpectationBackward"
