"""IBMExecutor in local testing mode (FakeManilaV2), and its failure paths without network."""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pytest
from qiskit.quantum_info import Statevector

from qfl.errors import QuantumError, QuantumResourceUnavailable
from quantum.circuits import VariationalCircuit, build_circuit
from quantum.config import CircuitConfig, NoiseConfig
from quantum.executors.aer import AerExecutor
from quantum.executors.ibm import IBMExecutor


def exact(vc: VariationalCircuit, x: np.ndarray, w: np.ndarray):
    """Statevector values (B, O) and parameter-shift weight Jacobian (B, O, P)."""

    def values(weights: np.ndarray) -> np.ndarray:
        out = np.empty((len(x), vc.num_outputs))
        for b, slots in enumerate(vc.slot_values(x)):
            bound = dict(zip(vc.slots, slots, strict=True)) | dict(
                zip(vc.weights, weights, strict=True)
            )
            state = Statevector(vc.circuit.assign_parameters(bound))
            out[b] = [state.expectation_value(op).real for op in vc.observables]
        return out

    shift = np.pi / 2 * np.eye(len(w))
    d_w = np.stack([(values(w + s) - values(w - s)) / 2 for s in shift], axis=-1)
    return values(w), d_w


@pytest.fixture(scope="module")
def case():
    pytest.importorskip("qiskit_ibm_runtime", reason="the ibm extra is not installed")
    vc = build_circuit(CircuitConfig(qubits=3, layers=1))
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (3, 3))
    w = rng.uniform(-np.pi, np.pi, vc.num_weights)
    return vc, x, w, exact(vc, x, w)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the IBM executor tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_fake_manila_expectations_are_close_to_exact(case, no_network):
    vc, x, w, (values, _) = case
    executor = IBMExecutor(vc, backend="fake_manila", shots=4096, seed=1)
    assert executor.local and executor.device.num_qubits == 5
    assert all(op.num_qubits == 5 for op in executor.observables)
    got = executor.expectations(x, w)
    assert got.shape == (3, 3) and executor.calls == 1
    # Manila's qubit 2 reads out badly (9.6 % flips) and the local mode mitigates nothing
    np.testing.assert_allclose(got[:, :2], values[:, :2], atol=0.2)
    np.testing.assert_allclose(got, values, atol=0.3)
    # the same snapshot simulated by AerExecutor predicts the device up to shot noise
    snapshot = NoiseConfig(kind="device", device="fake_manila")
    predicted = AerExecutor(vc, precision=0.0, noise=snapshot, seed=1).expectations(x, w)
    standard_error = np.sqrt((1 - predicted**2) / 4096)
    assert np.all(np.abs(got - predicted) <= 5 * standard_error)


def test_fake_manila_jacobians_have_the_right_shape_and_sign(case, no_network):
    vc, x, w, (_, d_w) = case
    executor = IBMExecutor(vc, backend="fake_manila", shots=4096, seed=2)
    d_inputs, d_weights = executor.jacobians(x, w)
    assert executor.calls == 1
    assert d_inputs.shape == (3, 3, 3) and d_weights.shape == (3, 3, vc.num_weights)
    large = np.abs(d_w) > 0.2
    assert large.sum() >= 5
    assert np.all(np.sign(d_weights[large]) == np.sign(d_w[large]))


def test_seeded_local_runs_repeat(case, no_network):
    vc, x, w, _ = case
    first = IBMExecutor(vc, backend="fake_manila", shots=256, seed=3).expectations(x, w)
    again = IBMExecutor(vc, backend="fake_manila", shots=256, seed=3).expectations(x, w)
    np.testing.assert_array_equal(first, again)


def test_real_device_without_token_fails_fast_without_network(case, no_network, monkeypatch):
    vc, _, _, _ = case
    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    start = time.perf_counter()
    with pytest.raises(QuantumResourceUnavailable, match="QISKIT_IBM_TOKEN"):
        IBMExecutor.from_env(vc, backend="ibm_brisbane")
    with pytest.raises(QuantumResourceUnavailable, match="token"):
        IBMExecutor.from_env(vc, backend="ibm_brisbane", env={"QISKIT_IBM_TOKEN": ""})
    assert time.perf_counter() - start < 5.0


def test_a_device_needs_shots(case):
    vc, _, _, _ = case
    with pytest.raises(QuantumError, match="shots"):
        IBMExecutor(vc, backend="fake_manila", shots=None)


def test_missing_runtime_names_the_extra(monkeypatch):
    vc = build_circuit(CircuitConfig(qubits=2, layers=1))
    monkeypatch.setitem(sys.modules, "qiskit_ibm_runtime", None)  # import now fails
    with pytest.raises(QuantumResourceUnavailable, match=r'pip install -e "\.\[ibm\]"'):
        IBMExecutor(vc, backend="fake_manila")
