"""ReferenceExecutor (EstimatorQNN) against exact statevector values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qiskit.quantum_info import Statevector

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit, build_circuit
from quantum.config import CircuitConfig, NoiseConfig
from quantum.executors.aer import AerExecutor
from quantum.executors.reference import ReferenceExecutor


def exact_rows(vc: VariationalCircuit, values: np.ndarray) -> np.ndarray:
    """(R, S + P) values [slots | weights] -> (R, O) statevector expectations."""
    params = [*vc.slots, *vc.weights]
    out = np.empty((len(values), vc.num_outputs))
    for r, row in enumerate(values):
        state = Statevector(vc.circuit.assign_parameters(dict(zip(params, row, strict=True))))
        out[r] = [state.expectation_value(op).real for op in vc.observables]
    return out


def exact(vc: VariationalCircuit, x: np.ndarray, w: np.ndarray):
    """Values (B, O) and central finite-difference Jacobians (B, O, F), (B, O, P)."""
    values = np.concatenate([vc.slot_values(x), np.broadcast_to(w, (len(x), len(w)))], axis=1)
    n, h = values.shape[1], 1e-6
    step = h * np.eye(n)
    grads = np.stack(
        [
            (exact_rows(vc, values + step[i]) - exact_rows(vc, values - step[i])) / (2 * h)
            for i in range(n)
        ],
        axis=-1,
    )  # (B, O, S + P)
    slots = len(vc.slots)
    return exact_rows(vc, values), vc.fold_slot_grads(grads[..., :slots]), grads[..., slots:]


@pytest.fixture(scope="module")
def case():
    vc = build_circuit(
        CircuitConfig(qubits=3, layers=2, reupload=True, encoding="rx", observables=("ZZI", "IXZ"))
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (4, 3))
    w = rng.uniform(-np.pi, np.pi, vc.num_weights)
    return vc, x, w, exact(vc, x, w)


def test_exact_reference_matches_the_statevector(case):
    vc, x, w, (values, d_x, d_w) = case
    reference = ReferenceExecutor(vc)
    np.testing.assert_allclose(reference.expectations(x, w), values, atol=1e-6)
    got_x, got_w = reference.jacobians(x, w)
    assert got_x.shape == (4, 2, 3) and got_w.shape == (4, 2, vc.num_weights)
    np.testing.assert_allclose(got_x, d_x, atol=1e-6)
    np.testing.assert_allclose(got_w, d_w, atol=1e-6)


def test_torch_module_takes_slot_values_and_backpropagates(case):
    vc, x, w, (values, _, d_w) = case
    module = ReferenceExecutor(vc).torch_module(w)
    out = module(torch.tensor(vc.slot_values(x)))  # (B, O)
    np.testing.assert_allclose(out.detach().numpy(), values, atol=1e-6)
    out.sum().backward()
    np.testing.assert_allclose(module.weight.grad.numpy(), d_w.sum(axis=(0, 1)), atol=1e-5)


def test_noisy_baseline_agrees_with_the_aer_executor(case):
    vc, x, w, _ = case
    noise = NoiseConfig(kind="parametric", p1=0.001, p2=0.01)
    baseline = ReferenceExecutor(vc, noise=noise)  # precision 0: exact noisy values
    ours = AerExecutor(vc, precision=0.0, noise=noise)
    np.testing.assert_allclose(baseline.expectations(x, w), ours.expectations(x, w), atol=1e-10)
    for a, b in zip(baseline.jacobians(x, w), ours.jacobians(x, w), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_device_noise_is_left_to_the_aer_executor(case):
    vc, _, _, _ = case
    with pytest.raises(QuantumError, match="AerExecutor"):
        ReferenceExecutor(vc, noise=NoiseConfig(kind="device", device="generic:3"))
