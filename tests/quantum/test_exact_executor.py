"""ExactExecutor: expectations against qiskit, Jacobians against finite differences and Eq. 5."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from qiskit.quantum_info import Statevector

from qfl.errors import QuantumError
from quantum.circuits import build_circuit
from quantum.config import CircuitConfig
from quantum.executors.base import Executor
from quantum.executors.exact import ExactExecutor
from quantum.statevector import compile_circuit

PATTERNS = ["linear", "ring", "full"]


def setup(entanglement: str, batch: int = 3):
    circuit = build_circuit(
        CircuitConfig(qubits=4, layers=2, reupload=True, entanglement=entanglement)
    )
    rng = np.random.default_rng(len(entanglement))
    inputs = rng.uniform(-math.pi, math.pi, size=(batch, circuit.num_features))
    weights = rng.uniform(-math.pi, math.pi, size=circuit.num_weights)
    return circuit, inputs, weights


@pytest.mark.parametrize("entanglement", PATTERNS)
def test_expectations_match_qiskit_statevector(entanglement):
    circuit, inputs, weights = setup(entanglement)
    got = ExactExecutor(circuit).expectations(inputs, weights)  # (B, O)
    assert got.shape == (3, circuit.num_outputs) and got.dtype == np.float64
    params = [*circuit.slots, *circuit.weights]
    for b, slots in enumerate(circuit.slot_values(inputs)):
        bound = circuit.circuit.assign_parameters(
            dict(zip(params, [*slots, *weights], strict=True))
        )
        sv = Statevector(bound)
        np.testing.assert_allclose(
            got[b], [sv.expectation_value(o).real for o in circuit.observables], atol=1e-10
        )


@pytest.mark.parametrize("entanglement", PATTERNS)
def test_jacobians_match_central_finite_differences(entanglement):
    circuit, inputs, weights = setup(entanglement)
    executor = ExactExecutor(circuit)
    d_x, d_w = executor.jacobians(inputs, weights)  # (B, O, F), (B, O, P)
    assert d_x.shape == (3, circuit.num_outputs, circuit.num_features)
    assert d_w.shape == (3, circuit.num_outputs, circuit.num_weights)
    h = 1e-6
    for f in range(circuit.num_features):
        step = np.zeros_like(inputs)
        step[:, f] = h
        fd = (
            executor.expectations(inputs + step, weights)
            - executor.expectations(inputs - step, weights)
        ) / (2 * h)
        np.testing.assert_allclose(d_x[:, :, f], fd, atol=1e-5)
    for p in range(circuit.num_weights):
        step = np.zeros_like(weights)
        step[p] = h
        fd = (
            executor.expectations(inputs, weights + step)
            - executor.expectations(inputs, weights - step)
        ) / (2 * h)
        np.testing.assert_allclose(d_w[:, :, p], fd, atol=1e-5)


@pytest.mark.parametrize("entanglement", PATTERNS)
def test_jacobians_match_the_parameter_shift_rule(entanglement):
    circuit, inputs, weights = setup(entanglement)
    d_x, d_w = ExactExecutor(circuit).jacobians(inputs, weights)
    compiled = compile_circuit(circuit.circuit, [*circuit.slots, *circuit.weights])
    values = np.concatenate(
        [circuit.slot_values(inputs), np.tile(weights, (3, 1))], axis=1
    )  # (B, S + P)

    def expect(v: np.ndarray) -> np.ndarray:
        return compiled.expectations(torch.tensor(v), circuit.observables).numpy()

    shift_rule = np.stack(  # (B, O, S + P), Eq. 5 for every gate parameter
        [
            (expect(values + e) - expect(values - e)) / 2
            for e in np.eye(values.shape[1]) * math.pi / 2
        ],
        axis=2,
    )
    n_slots = len(circuit.slots)
    np.testing.assert_allclose(d_w, shift_rule[:, :, n_slots:], atol=1e-10)
    np.testing.assert_allclose(d_x, circuit.fold_slot_grads(shift_rule[:, :, :n_slots]), atol=1e-10)


def test_torch_forward_gradient_reaches_a_linear_layer_before_it():
    circuit, _, weights = setup("ring")
    executor = ExactExecutor(circuit)
    linear = torch.nn.Linear(5, circuit.num_features)
    theta = torch.nn.Parameter(torch.tensor(weights, dtype=torch.float32))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    out = executor.torch_forward(linear(x), theta)  # (6, O)
    assert out.dtype == torch.float32 and out.shape == (6, circuit.num_outputs)
    out.pow(2).sum().backward()
    assert linear.weight.grad.abs().sum() > 0
    assert theta.grad.abs().sum() > 0


@pytest.mark.parametrize("entanglement", PATTERNS)
def test_float32_matches_float64(entanglement):
    circuit, inputs, weights = setup(entanglement)
    double, single = ExactExecutor(circuit), ExactExecutor(circuit, dtype=torch.float32)
    np.testing.assert_allclose(
        single.expectations(inputs, weights), double.expectations(inputs, weights), atol=1e-5
    )
    for a, b in zip(
        single.jacobians(inputs, weights), double.jacobians(inputs, weights), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])  # the NumPy fast path, or torch's adjoint
def test_adjoint_and_autograd_executors_agree(fast):
    circuit, inputs, weights = setup("full")
    executor = ExactExecutor(circuit, fast=fast)
    assert (executor.fast_path is not None) is fast
    adjoint = executor.jacobians(inputs, weights)
    autograd = ExactExecutor(circuit, method="autograd").jacobians(inputs, weights)
    for a, b in zip(adjoint, autograd, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("fast", [True, False])
def test_native_gradients_equal_the_generic_jacobian_bridge(fast):
    circuit, inputs, weights = setup("linear")
    executor = ExactExecutor(circuit, fast=fast)
    grads = []
    for forward in (executor.torch_forward, lambda x, w: Executor.torch_forward(executor, x, w)):
        x = torch.tensor(inputs, requires_grad=True)
        w = torch.tensor(weights, requires_grad=True)
        out = forward(x, w)
        (out * torch.arange(1.0, 1 + out.shape[1], dtype=torch.float64)).sum().backward()
        grads.append((x.grad.numpy(), w.grad.numpy()))
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_bad_shapes_raise():
    circuit, inputs, weights = setup("linear")
    executor = ExactExecutor(circuit)
    with pytest.raises(QuantumError, match="expected \\(B, 4\\)"):
        executor.expectations(inputs[:, :3], weights)
    with pytest.raises(QuantumError, match="expected \\(8,\\)"):
        executor.expectations(inputs, weights[:5])
    with pytest.raises(QuantumError, match="float32 or float64"):
        ExactExecutor(circuit, dtype=torch.float16)


def test_jacobians_without_the_input_gradient():
    circuit, inputs, weights = setup("ring")
    executor = ExactExecutor(circuit)
    d_x, d_w = executor.jacobians(inputs, weights, inputs_grad=False)
    assert d_x is None
    np.testing.assert_allclose(d_w, executor.jacobians(inputs, weights)[1], atol=1e-12)
