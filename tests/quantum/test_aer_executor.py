"""AerExecutor against exact statevector values: shot noise, noise, gradients, one call."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter
from qiskit.quantum_info import SparsePauliOp, Statevector
from qiskit_aer.noise import NoiseModel, ReadoutError

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit, build_circuit
from quantum.config import CircuitConfig, NoiseConfig
from quantum.executors.aer import AerExecutor, check_shift_rule

SHOTS = 10**6
DEPOLARIZING = NoiseConfig(kind="parametric", p1=0.001, p2=0.01)


def exact_rows(vc: VariationalCircuit, values: np.ndarray) -> np.ndarray:
    """(R, S + P) values [slots | weights] -> (R, O) statevector expectations."""
    params = [*vc.slots, *vc.weights]
    out = np.empty((len(values), vc.num_outputs))
    for r, row in enumerate(values):
        state = Statevector(vc.circuit.assign_parameters(dict(zip(params, row, strict=True))))
        out[r] = [state.expectation_value(op).real for op in vc.observables]
    return out


def exact(vc: VariationalCircuit, x: np.ndarray, w: np.ndarray):
    """Statevector values (B, O) and parameter-shift Jacobians (B, O, F), (B, O, P)."""
    values = np.concatenate([vc.slot_values(x), np.broadcast_to(w, (len(x), len(w)))], axis=1)
    n = values.shape[1]
    shift = np.pi / 2 * np.eye(n)
    grads = np.stack(
        [
            (exact_rows(vc, values + shift[i]) - exact_rows(vc, values - shift[i])) / 2
            for i in range(n)
        ],
        axis=-1,
    )  # (B, O, S + P)
    slots = len(vc.slots)
    return exact_rows(vc, values), vc.fold_slot_grads(grads[..., :slots]), grads[..., slots:]


@pytest.fixture(scope="module")
def case():
    vc = build_circuit(CircuitConfig(qubits=3, layers=2, reupload=True))
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (4, 3))  # (B, F)
    w = rng.uniform(-np.pi, np.pi, vc.num_weights)  # (P,)
    return vc, x, w, exact(vc, x, w)


def test_expectations_are_within_shot_noise_of_exact(case):
    vc, x, w, (values, _, _) = case
    executor = AerExecutor(vc, precision=1e-3, seed=1)
    assert executor.shots == SHOTS
    standard_error = np.sqrt((1 - values**2) / SHOTS)
    assert np.all(np.abs(executor.expectations(x, w) - values) <= 5 * standard_error + 2 / SHOTS)


def test_parameter_shift_gradients_are_within_shot_noise_of_exact(case):
    vc, x, w, (_, d_x, d_w) = case
    got_x, got_w = AerExecutor(vc, shots=SHOTS, seed=2).jacobians(x, w)
    assert got_x.shape == d_x.shape == (4, 3, 3) and got_w.shape == d_w.shape == (4, 3, 6)
    # (f+ - f-) / 2 has standard error <= sqrt(2)/2 / sqrt(shots); an input sums 2 slots
    tolerance = 6 * np.sqrt(2) / 2 / np.sqrt(SHOTS)
    np.testing.assert_allclose(got_w, d_w, atol=tolerance, rtol=0)
    np.testing.assert_allclose(got_x, d_x, atol=np.sqrt(2) * tolerance, rtol=0)


def test_one_backend_call_per_expectations_and_per_jacobians(case):
    vc, x, w, _ = case
    executor = AerExecutor(vc, noise=DEPOLARIZING, seed=3)
    runs = []
    run = executor.estimator.run

    def counting_run(pubs, **options):
        runs.append(len(pubs))
        return run(pubs, **options)

    executor.estimator.run = counting_run
    executor.expectations(x, w)
    assert executor.calls == 1 and len(runs) == 1
    executor.jacobians(x, w)
    assert executor.calls == 2 and len(runs) == 2


def test_depolarizing_noise_shrinks_values_toward_zero_keeping_their_sign(case):
    vc, x, w, (values, _, _) = case
    noisy = AerExecutor(vc, precision=0.0, noise=DEPOLARIZING, seed=4).expectations(x, w)
    assert not np.allclose(noisy, values, atol=1e-3)
    assert np.abs(noisy).mean() < np.abs(values).mean()
    assert np.mean(np.abs(noisy) < np.abs(values)) > 0.9
    large = np.abs(values) > 0.05
    assert np.all(np.sign(noisy[large]) == np.sign(values[large]))


def test_readout_flips_scale_each_measured_qubit():
    vc = build_circuit(CircuitConfig(qubits=3, layers=2, observables=("IIZ", "ZXI")))
    x, w = np.full((2, 3), 0.3), np.linspace(-1, 1, vc.num_weights)
    values, _, _ = exact(vc, x, w)
    noise = NoiseConfig(kind="parametric", readout=0.05)
    noisy = AerExecutor(vc, precision=0.0, noise=noise).expectations(x, w)
    np.testing.assert_allclose(noisy, values * np.array([0.9, 0.9**2]), atol=1e-12)


def test_light_cones_give_the_values_of_the_full_circuit():
    vc = build_circuit(CircuitConfig(qubits=4, layers=2, entanglement="linear"))
    x = np.random.default_rng(5).uniform(-2, 2, (3, 4))
    w = np.random.default_rng(6).uniform(-2, 2, vc.num_weights)
    # relaxation makes the noise non-unital: light cones must still be exact
    noise = NoiseConfig(kind="parametric", p1=0.002, p2=0.02, t1_us=40.0, t2_us=50.0)
    cut = AerExecutor(vc, precision=0.0, noise=noise, lightcone=True)
    full = AerExecutor(vc, precision=0.0, noise=noise, lightcone=False)
    smallest = min(len(g.circuit.data) for g in cut.groups)
    assert smallest < len(vc.circuit.data) and len(full.groups) == 1
    np.testing.assert_allclose(cut.expectations(x, w), full.expectations(x, w), atol=1e-10)
    for a, b in zip(cut.jacobians(x, w), full.jacobians(x, w), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_seeded_runs_repeat_exactly(case):
    vc, x, w, _ = case

    def run(seed: int):
        executor = AerExecutor(vc, noise=DEPOLARIZING, seed=seed)
        return executor.expectations(x, w), *executor.jacobians(x, w)

    first, second, other = run(7), run(7), run(8)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])


def test_reseed_restarts_the_shot_noise(case):
    vc, x, w, _ = case
    executor = AerExecutor(vc, seed=9)
    first = executor.expectations(x, w)
    assert not np.array_equal(executor.expectations(x, w), first)
    executor.reseed(9)
    np.testing.assert_array_equal(executor.expectations(x, w), first)


def test_spsa_gradient_points_along_the_true_gradient(case):
    vc, x, w, (_, d_x, d_w) = case
    executor = AerExecutor(
        vc, precision=1e-3, gradient="spsa", spsa_samples=64, spsa_step=0.1, seed=10
    )
    got_x, got_w = executor.jacobians(x, w)
    assert executor.calls == 1
    got, true = (
        np.concatenate([got_x.ravel(), got_w.ravel()]),
        np.concatenate([d_x.ravel(), d_w.ravel()]),
    )
    cosine = got @ true / (np.linalg.norm(got) * np.linalg.norm(true))
    assert cosine > 0.8


def test_torch_bridge_backpropagates_the_executor_jacobians(case):
    vc, x, w, (_, d_x, d_w) = case
    inputs = torch.tensor(x, requires_grad=True)
    weights = torch.tensor(w, requires_grad=True)
    out = AerExecutor(vc, precision=1e-3, seed=11).torch_forward(inputs, weights)  # (B, O)
    upstream = torch.tensor(np.random.default_rng(12).normal(size=tuple(out.shape)))
    (out * upstream).sum().backward()
    # a twin with the same seed makes the same calls: expectations, then jacobians
    twin = AerExecutor(vc, precision=1e-3, seed=11)
    np.testing.assert_array_equal(out.detach().numpy(), twin.expectations(x, w))
    j_x, j_w = twin.jacobians(x, w)
    g = upstream.numpy()
    np.testing.assert_allclose(inputs.grad.numpy(), np.einsum("bo,bof->bf", g, j_x), atol=1e-12)
    np.testing.assert_allclose(weights.grad.numpy(), np.einsum("bo,bop->p", g, j_w), atol=1e-12)
    # and they are the true gradients, up to shot noise
    np.testing.assert_allclose(weights.grad.numpy(), np.einsum("bo,bop->p", g, d_w), atol=0.05)


def test_device_snapshot_runs_the_transpiled_circuit(case):
    vc, x, w, (values, _, d_w) = case
    executor = AerExecutor(
        vc, precision=0.0, noise=NoiseConfig(kind="device", device="generic:5"), seed=13
    )
    assert set(executor.run_circuit.count_ops()) <= {"rz", "sx", "x", "cx", "id"}
    assert all(op.num_qubits == 5 for op in executor.observables)
    np.testing.assert_allclose(executor.expectations(x, w), values, atol=0.15)
    _, got_w = executor.jacobians(x, w)
    np.testing.assert_allclose(got_w, d_w, atol=0.15)


def test_pickled_executor_continues_identically(case):
    vc, x, w, _ = case
    executor = AerExecutor(vc, noise=DEPOLARIZING, seed=14)
    executor.expectations(x, w)
    clone = pickle.loads(pickle.dumps(executor))
    np.testing.assert_array_equal(clone.jacobians(x, w)[1], executor.jacobians(x, w)[1])


def test_bad_arguments_raise_quantum_errors(case):
    vc, x, w, _ = case
    with pytest.raises(QuantumError, match="not both"):
        AerExecutor(vc, shots=100, precision=0.1)
    with pytest.raises(QuantumError, match="spsa"):
        AerExecutor(vc, gradient="adjoint")
    executor = AerExecutor(vc)
    with pytest.raises(QuantumError, match="inputs must be"):
        executor.expectations(x[:, :2], w)
    with pytest.raises(QuantumError, match="weights must be"):
        executor.jacobians(x, w[:-1])


def test_shift_rule_check_rejects_shared_or_scaled_parameters():
    t = Parameter("t")
    shared = QuantumCircuit(2)
    shared.ry(t, 0)
    shared.ry(t, 1)
    with pytest.raises(QuantumError, match="two gates"):
        check_shift_rule(shared)
    scaled = QuantumCircuit(1)
    scaled.rz(2 * t, 0)
    with pytest.raises(QuantumError, match="parameter-shift rule"):
        check_shift_rule(scaled)
    fine = QuantumCircuit(1)
    fine.rz(t + 3.0, 0)
    check_shift_rule(fine)


def test_asymmetric_readout_errors_enter_exactly():
    vc = build_circuit(CircuitConfig(qubits=2, layers=1, observables=("IZ", "ZI", "ZZ")))
    x, w = np.array([[0.4, -1.1], [2.0, 0.3]]), np.array([0.7, -0.2])
    confusion = [np.array([[0.98, 0.02], [0.10, 0.90]]), np.array([[0.95, 0.05], [0.03, 0.97]])]
    model = NoiseModel(basis_gates=["ry", "cx"])
    for qubit, matrix in enumerate(confusion):  # rows: prepared 0/1, columns: read 0/1
        model.add_readout_error(ReadoutError(matrix), [qubit])
    got = AerExecutor(vc, precision=0.0, noise=model).expectations(x, w)
    for b, slots in enumerate(vc.slot_values(x)):
        bound = dict(zip(vc.slots, slots, strict=True)) | dict(zip(vc.weights, w, strict=True))
        probs = Statevector(vc.circuit.assign_parameters(bound)).probabilities()  # index q1 q0
        read = np.kron(confusion[1], confusion[0]).T @ probs  # P(read bits)
        z0, z1 = np.array([1, -1, 1, -1]), np.array([1, 1, -1, -1])
        np.testing.assert_allclose(got[b], [read @ z0, read @ z1, read @ (z0 * z1)], atol=1e-12)


def test_an_observable_whose_light_cone_has_no_parameters():
    x0, theta0 = Parameter("x0"), Parameter("theta0")
    qc = QuantumCircuit(2)
    qc.ry(x0, 0)
    qc.ry(theta0, 0)
    qc.h(1)
    ops = (SparsePauliOp("IZ"), SparsePauliOp("XI"))
    vc = VariationalCircuit(qc, [x0], [theta0], np.array([0]), ops)
    x, w = np.array([[0.3, 0.0], [1.2, 0.0]]), np.array([0.5])
    executor = AerExecutor(vc, shots=1000, seed=15)
    assert any(g.columns.size == 0 for g in executor.groups)
    values = executor.expectations(x, w)
    np.testing.assert_array_equal(values[:, 1], 1.0)  # <X> = 1 after H, no shot noise
    assert np.all(np.abs(values[:, 0] - np.cos(x[:, 0] + 0.5)) < 0.2)
    d_x, d_w = executor.jacobians(x, w)
    assert np.all(d_w[:, 1] == 0) and np.all(d_x[:, 1] == 0) and np.all(d_x[:, :, 1] == 0)


def test_weight_only_jacobians_match_and_skip_the_input_shifts():
    circuit = build_circuit(CircuitConfig(qubits=3, layers=2, entanglement="linear"))
    rng = np.random.default_rng(11)
    x = rng.uniform(-1, 1, size=(4, 3))
    w = rng.uniform(-np.pi, np.pi, size=circuit.num_weights)
    full = AerExecutor(circuit, precision=0.0, seed=3, lightcone=False)
    part = AerExecutor(circuit, precision=0.0, seed=3, lightcone=False)
    d_x, d_w = full.jacobians(x, w)
    none, d_w_only = part.jacobians(x, w, inputs_grad=False)
    assert none is None and d_x.shape == (4, 3, 3)
    np.testing.assert_allclose(d_w_only, d_w, atol=1e-10)
