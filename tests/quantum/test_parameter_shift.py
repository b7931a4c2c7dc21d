"""Parameter-shift and SPSA layouts and assembly, against analytic values and a statevector."""

from __future__ import annotations

import numpy as np
import pytest
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector

from quantum.circuits import build_circuit
from quantum.config import CircuitConfig
from quantum.parameter_shift import assemble, shifted_values, spsa_assemble, spsa_values


def test_shifted_values_layout():
    values = np.array([[1.0, 2.0], [3.0, 4.0]])  # (B=2, N=2)
    rows = shifted_values(values, shift=0.5)
    assert rows.shape == (2 * 5, 2)
    expected_first = [[1, 2], [1.5, 2], [1, 2.5], [0.5, 2], [1, 1.5]]
    np.testing.assert_allclose(rows[:5], expected_first)
    np.testing.assert_allclose(rows[5], [3, 4])


@pytest.mark.parametrize("shift", [np.pi / 2, 0.3])
def test_ry_expectation_and_gradient_are_analytic(shift):
    # <Z> after RY(t) on |0> is cos t, so d<Z>/dt = -sin t
    t = np.linspace(-3, 3, 7)[:, None]  # (B, 1)
    results = np.cos(shifted_values(t, shift))  # (B*3, 1) "hardware" results, O = 1
    values, grads = assemble(results, batch=7, n=1, shift=shift)
    np.testing.assert_allclose(values, np.cos(t), atol=1e-12)
    np.testing.assert_allclose(grads[:, 0, 0], -np.sin(t[:, 0]), atol=1e-12)


def _statevector_values(circuit: QuantumCircuit, ops, rows: np.ndarray) -> np.ndarray:
    """(R, n_params) in circuit.parameters order -> (R, O) exact expectations."""
    out = np.empty((len(rows), len(ops)))
    for r, row in enumerate(rows):
        state = Statevector(circuit.assign_parameters(row))  # row in circuit.parameters order
        out[r] = [state.expectation_value(op).real for op in ops]
    return out


def test_gradients_match_statevector_finite_differences():
    vc = build_circuit(CircuitConfig(qubits=2, layers=2, reupload=True, observables=("ZZ", "XI")))
    qc, ops = vc.circuit, vc.observables
    values = np.random.default_rng(0).uniform(-np.pi, np.pi, (3, qc.num_parameters))  # (B, N)
    batch, n = values.shape
    expectations, grads = assemble(_statevector_values(qc, ops, shifted_values(values)), batch, n)
    np.testing.assert_allclose(expectations, _statevector_values(qc, ops, values), atol=1e-12)
    h = 1e-6
    for i in range(n):
        step = h * np.eye(n)[i]
        fd = _statevector_values(qc, ops, values + step) - _statevector_values(
            qc, ops, values - step
        )
        np.testing.assert_allclose(grads[:, :, i], fd / (2 * h), atol=1e-6)


def test_spsa_layout_and_seeding():
    values = np.zeros((2, 3))
    rows, d = spsa_values(values, k=4, c=0.1, rng=np.random.default_rng(5))
    assert rows.shape == (2 * 9, 3) and d.shape == (2, 4, 3)
    assert set(np.unique(d)) == {-1.0, 1.0}
    np.testing.assert_allclose(rows[1:5], 0.1 * d[0])
    np.testing.assert_allclose(rows[5:9], -0.1 * d[0])
    again, d2 = spsa_values(values, k=4, c=0.1, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(again, rows)
    np.testing.assert_array_equal(d2, d)


def test_spsa_estimate_converges_to_the_gradient():
    # f(v) = sum_i a_i cos(v_i): the central difference along d is exact up to O(c^2)
    a = np.array([1.0, -0.5, 2.0, 0.3])
    f = lambda rows: (a * np.cos(rows)).sum(axis=1, keepdims=True)  # noqa: E731  (R, 1)
    values = np.random.default_rng(1).uniform(-2, 2, (2, 4))
    rows, d = spsa_values(values, k=4000, c=1e-3, rng=np.random.default_rng(2))
    expectations, grads = spsa_assemble(f(rows), d, c=1e-3)
    np.testing.assert_allclose(expectations, f(values), atol=1e-12)
    exact = -a * np.sin(values)  # (B, N)
    # per-component std of the mean is ~ |grad| / sqrt(k)
    tolerance = 5 * np.linalg.norm(exact, axis=1, keepdims=True) / np.sqrt(4000)
    assert np.all(np.abs(grads[:, 0, :] - exact) < tolerance)


def test_ry_gradient_on_a_statevector():
    qc = QuantumCircuit(1)
    qc.ry(Parameter("t"), 0)
    t = np.array([[0.7]])
    results = _statevector_values(qc, [SparsePauliOp("Z")], shifted_values(t))
    _, grads = assemble(results, 1, 1)
    assert grads[0, 0, 0] == pytest.approx(-np.sin(0.7), abs=1e-12)


def test_shifting_a_subset_of_columns_matches_the_full_gradient_columns():
    from quantum.parameter_shift import assemble, shifted_values

    rng = np.random.default_rng(5)
    values = rng.uniform(-np.pi, np.pi, size=(3, 4))  # (B, N)

    def f(rows):  # a separable trigonometric "circuit": sum of cosines, one output
        return np.cos(rows).sum(axis=1, keepdims=True)

    _, full = assemble(f(shifted_values(values)), 3, 4)  # (B, 1, 4)
    columns = np.array([1, 3])
    rows = shifted_values(values, columns=columns)
    assert rows.shape == (3 * (1 + 2 * 2), 4)
    _, part = assemble(f(rows), 3, 2)  # (B, 1, 2)
    np.testing.assert_allclose(part, full[..., columns], atol=1e-12)
    np.testing.assert_allclose(full[..., 0], -np.sin(values[:, [0]]), atol=1e-12)
