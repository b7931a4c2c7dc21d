"""Error mitigation: folding, extrapolation, readout inversion, parity, and inside the executors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from qiskit import QuantumCircuit
from qiskit.circuit import ParameterVector
from qiskit.quantum_info import (
    DensityMatrix,
    Operator,
    SparsePauliOp,
    Statevector,
    random_density_matrix,
)
from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit, build_circuit
from quantum.config import CircuitConfig, MitigationConfig, NoiseConfig
from quantum.executors.aer import AerExecutor, readout_expansion
from quantum.executors.base import Overhead
from quantum.mitigation import (
    OutputMap,
    achieved_scale,
    bit_parity,
    calibrate,
    confusion_matrices,
    extrapolate,
    fold_circuit,
    linear_weights,
    mitigate_distribution,
    output_map,
    parity_operator,
    postselect_parity,
    readout_channels,
    readout_from_calibration,
    readout_inverse_expansion,
    richardson_weights,
    substrings,
    symmetry_projected,
)

NOISE = NoiseConfig(kind="parametric", p2=0.02, readout=0.02)


def bind(vc: VariationalCircuit, circuit: QuantumCircuit, x: np.ndarray, w: np.ndarray):
    values = dict(zip(vc.slots, vc.slot_values(x[None])[0], strict=True))
    values |= dict(zip(vc.weights, w, strict=True))
    return circuit.assign_parameters({p: values[p] for p in circuit.parameters})


def exact_values(vc: VariationalCircuit, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    out = np.empty((len(x), vc.num_outputs))
    for b, row in enumerate(x):
        state = Statevector(bind(vc, vc.circuit, row, w))
        out[b] = [state.expectation_value(op).real for op in vc.observables]
    return out


@pytest.fixture(scope="module")
def ansatz():
    vc = build_circuit(CircuitConfig(qubits=3, layers=2, entanglement="ring"))
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (6, 3))
    w = rng.uniform(-np.pi, np.pi, vc.num_weights)
    return vc, x, w, exact_values(vc, x, w)


# ---------------------------------------------------------------- folding


@pytest.mark.parametrize("method", ["global", "local"])
@pytest.mark.parametrize("scale", [1.0, 1.5, 3.0, 3.4, 5.0])
def test_folding_leaves_the_noiseless_circuit_unchanged(ansatz, method, scale):
    vc, x, w, _ = ansatz
    folded = fold_circuit(vc.circuit, scale, method)
    assert set(folded.parameters) == set(vc.circuit.parameters)
    original = Operator(bind(vc, vc.circuit, x[0], w))
    assert Operator(bind(vc, folded, x[0], w)).equiv(original)
    for row in x[:3]:
        state = Statevector(bind(vc, folded, row, w))
        reference = Statevector(bind(vc, vc.circuit, row, w))
        for op in vc.observables:
            assert state.expectation_value(op).real == pytest.approx(
                reference.expectation_value(op).real, abs=1e-10
            )


@pytest.mark.parametrize("method", ["global", "local"])
def test_folding_reaches_the_scale_in_gate_count(ansatz, method):
    vc, *_ = ansatz
    d = len(vc.circuit.data)  # 12 RY + 6 CX
    for scale, folds in [(1.0, 0), (3.0, d), (5.0, 2 * d), (1.5, round(0.25 * d))]:
        folded = fold_circuit(vc.circuit, scale, method)
        assert len(folded.data) == d + 2 * folds
        assert achieved_scale(vc.circuit, folded) == pytest.approx(1 + 2 * folds / d)


def test_global_folding_is_u_udag_u_and_local_folds_each_gate():
    qc = QuantumCircuit(2)
    qc.ry(0.3, 0)
    qc.cx(0, 1)
    names = lambda c: [(i.operation.name, *i.operation.params) for i in c.data]  # noqa: E731
    assert names(fold_circuit(qc, 3, "global")) == [
        ("ry", 0.3), ("cx",), ("cx",), ("ry", -0.3), ("ry", 0.3), ("cx",)
    ]  # fmt: skip
    assert names(fold_circuit(qc, 3, "local")) == [
        ("ry", 0.3), ("ry", -0.3), ("ry", 0.3), ("cx",), ("cx",), ("cx",)
    ]  # fmt: skip
    # scale 2 on 2 gates: one extra fold, of the last gate (global) / spread (local)
    assert names(fold_circuit(qc, 2, "global")) == [("ry", 0.3), ("cx",), ("cx",), ("cx",)]


def test_folding_rejects_measurements_and_scales_below_one():
    qc = QuantumCircuit(1, 1)
    qc.x(0)
    with pytest.raises(QuantumError, match="below|< 1"):
        fold_circuit(qc, 0.5)
    qc.measure(0, 0)
    with pytest.raises(QuantumError, match="unitary"):
        fold_circuit(qc, 3)


# ---------------------------------------------------------------- extrapolation


def test_richardson_weights_for_1_3_5():
    np.testing.assert_allclose(richardson_weights([1, 3, 5]), [15 / 8, -10 / 8, 3 / 8])
    assert richardson_weights([1, 2, 3, 4]).sum() == pytest.approx(1.0)


@pytest.mark.parametrize("scales", [(1.0, 3.0, 5.0), (1.0, 1.5, 2.0, 3.0)])
def test_richardson_recovers_a_polynomial_of_degree_m_minus_1(scales):
    lam = np.array(scales)
    coeffs = np.array([0.42, -0.13, 0.021, -0.004])[: len(lam)]  # E(0) = 0.42
    y = sum(c * lam**k for k, c in enumerate(coeffs))
    assert extrapolate(y, scales, "richardson") == pytest.approx(0.42, abs=1e-12)


def test_linear_recovers_a_line_and_matches_least_squares():
    lam = np.array([1.0, 2.0, 3.0, 5.0])
    y = -0.3 + 0.07 * lam
    assert extrapolate(y, lam, "linear") == pytest.approx(-0.3, abs=1e-12)
    noisy = np.random.default_rng(1).normal(size=(4, 5))  # (m, values)
    expected = [np.polyval(np.polyfit(lam, col, 1), 0.0) for col in noisy.T]
    np.testing.assert_allclose(extrapolate(noisy, lam, "linear"), expected, atol=1e-12)
    np.testing.assert_allclose(linear_weights(lam) @ noisy, expected, atol=1e-12)


def test_richardson_matches_the_interpolating_polynomial():
    lam = np.array([1.0, 2.0, 3.5])
    y = np.random.default_rng(2).normal(size=(3, 4, 2))  # (m, rows, outputs)
    got = extrapolate(y, lam, "richardson")
    assert got.shape == (4, 2)
    for r in range(4):
        for o in range(2):
            assert got[r, o] == pytest.approx(np.polyval(np.polyfit(lam, y[:, r, o], 2), 0.0))


@pytest.mark.parametrize(
    ("amplitude", "rate", "asymptote"), [(0.7, 0.1, 0.0), (-0.4, 0.3, 0.0), (0.5, 0.2, 0.2)]
)
def test_exponential_with_known_asymptote_recovers_the_curve(amplitude, rate, asymptote):
    lam = np.array([1.0, 3.0, 5.0])
    y = asymptote + amplitude * np.exp(-rate * lam)
    got = extrapolate(y, lam, "exponential", asymptote=asymptote)
    assert got == pytest.approx(asymptote + amplitude, abs=1e-12)


@pytest.mark.parametrize("scales", [(1.0, 2.0, 3.0), (1.0, 3.0, 5.0)])
def test_exponential_with_fitted_asymptote_recovers_the_curve(scales):
    lam = np.array(scales)
    y = np.stack([0.1 + 0.6 * np.exp(-0.25 * lam), -0.2 - 0.3 * np.exp(-0.5 * lam)], axis=1)
    got = extrapolate(y, lam, "exponential", asymptote=None)
    np.testing.assert_allclose(got, [0.7, -0.5], atol=1e-12)


def test_exponential_falls_back_to_the_least_noisy_value_where_it_cannot_fit():
    lam = [1.0, 3.0, 5.0]
    crossing = np.array([0.1, -0.05, 0.02])  # changes sign: no exponential to 0 fits
    assert extrapolate(crossing, lam, "exponential") == 0.1
    growing = np.array([0.1, 0.2, 0.4])  # q = 2 >= 1: not a decay
    assert extrapolate(growing, lam, "exponential", asymptote=None) == 0.1


# ---------------------------------------------------------------- readout


def test_confusion_matrices_and_channels_round_trip():
    a, b = np.array([0.9, 0.85]), np.array([0.04, -0.02])
    confusion = confusion_matrices(a, b)  # [measured, prepared]
    np.testing.assert_allclose(confusion.sum(axis=1), 1.0)
    np.testing.assert_allclose(confusion[0], [[0.97, 0.07], [0.03, 0.93]])
    got_a, got_b = readout_channels(confusion)
    np.testing.assert_allclose(got_a, a)
    np.testing.assert_allclose(got_b, b)
    # <Z> read after preparing |0> is a + b, after |1> it is -a + b
    got_a, got_b = readout_from_calibration(a + b, -a + b)
    np.testing.assert_allclose(got_a, a)
    np.testing.assert_allclose(got_b, b)


def test_tensored_readout_inversion_recovers_a_known_distribution():
    rng = np.random.default_rng(3)
    confusion = np.stack(
        [[[0.97, 0.08], [0.03, 0.92]], [[0.9, 0.05], [0.1, 0.95]], [[0.99, 0.2], [0.01, 0.8]]]
    )  # qubits 0, 1, 2; [measured, prepared]
    truth = rng.dirichlet(np.ones(8))  # index bits q2 q1 q0
    measured = np.kron(confusion[2], np.kron(confusion[1], confusion[0])) @ truth
    assert not np.allclose(measured, truth, atol=1e-3)
    np.testing.assert_allclose(mitigate_distribution(measured, confusion), truth, atol=1e-12)


@pytest.mark.parametrize("label", ["IZZ", "ZIZ", "ZZZ", "XYZ", "IIZ"])
def test_readout_inverse_expansion_undoes_the_readout_channel(label):
    rng = np.random.default_rng(4)
    product = QuantumCircuit(3)  # large <Z>, <Y>, <X> on qubits 0, 1, 2, mixed with noise
    product.ry(0.6, 0)
    product.rx(-0.8, 1)
    product.ry(1.0, 2)
    rho = DensityMatrix(
        0.7 * DensityMatrix(product).data + 0.3 * random_density_matrix(8, seed=5).data
    )
    a, b = rng.uniform(0.8, 0.95, 3), rng.uniform(-0.05, 0.05, 3)

    def measured(sub: str) -> float:  # mean of the readings of `sub` (exact forward model)
        return sum(w * rho.expectation_value(SparsePauliOp(s)).real
                   for s, w in readout_expansion(sub, a, b))  # fmt: skip

    got = sum(w * measured(s) for s, w in readout_inverse_expansion(label, a, b))
    assert got == pytest.approx(rho.expectation_value(SparsePauliOp(label)).real, abs=1e-12)
    assert abs(measured(label) - got) > 0.01


def test_calibrated_output_map_inverts_symmetric_readout():
    ops = (SparsePauliOp("IZ"), SparsePauliOp(["ZZ", "XI"], [0.5, -0.25]))
    out = output_map(ops, readout=True)
    assert set(out.labels) == {"IZ", "ZZ", "XI", "II", "ZI"}
    np.testing.assert_array_equal(out.apply(np.eye(5)), out.num)  # uncalibrated: ignores subs
    a, b = np.array([0.8, 0.9]), np.zeros(2)
    fixed = calibrate(out, a, b)
    truth = {"IZ": 0.3, "ZZ": -0.6, "XI": 0.5, "II": 1.0, "ZI": 0.1}
    scale = {"IZ": 0.8, "ZZ": 0.72, "XI": 0.9, "II": 1.0, "ZI": 0.9}
    raw = np.array([[truth[lb] * scale[lb] for lb in out.labels]])
    np.testing.assert_allclose(fixed.apply(raw), [[0.3, 0.5 * -0.6 - 0.25 * 0.5]], atol=1e-12)


def test_substrings_of_a_pauli_label():
    assert sorted(substrings("XIZ")) == ["III", "IIZ", "XII", "XIZ"]


# ---------------------------------------------------------------- parity


def test_parity_postselection_removes_odd_outcomes():
    counts = {"000": 40, "011": 25, "001": 7, "111": 3, "101": 20, "010": 5}
    assert postselect_parity(counts) == {"000": 40, "011": 25, "101": 20}
    assert postselect_parity(counts, "odd") == {"001": 7, "111": 3, "010": 5}
    assert bit_parity("01 1") == 0 and bit_parity("1") == 1


def test_symmetry_projection_is_postselection_on_a_state():
    rho = random_density_matrix(8, seed=6)
    parity = parity_operator(3)
    assert parity == SparsePauliOp("ZZZ")
    for label in ["IIZ", "ZZI", "XXI"]:
        op = SparsePauliOp(label)
        numerator, denominator = symmetry_projected(op, parity, +1)
        projector = (np.eye(8) + np.diag([(-1) ** bin(i).count("1") for i in range(8)])) / 2
        kept = DensityMatrix(projector @ rho.data @ projector)
        expected = kept.expectation_value(op).real / np.trace(kept.data).real
        got = rho.expectation_value(numerator).real / rho.expectation_value(denominator).real
        assert got == pytest.approx(expected, abs=1e-12)
    with pytest.raises(QuantumError, match="commute"):
        symmetry_projected(SparsePauliOp("IIX"), parity, 1)


def test_output_map_with_parity_divides_by_the_kept_fraction():
    out = output_map([SparsePauliOp("IZ")], symmetry=SparsePauliOp("ZZ"), sector=1)
    assert isinstance(out, OutputMap) and set(out.labels) == {"IZ", "ZI", "II", "ZZ"}
    values = {"IZ": 0.5, "ZI": 0.3, "II": 1.0, "ZZ": 0.6}
    raw = np.array([[values[lb] for lb in out.labels]])
    np.testing.assert_allclose(out.apply(raw), [[(0.5 + 0.3) / (1 + 0.6)]])


# ---------------------------------------------------------------- config


def test_config_validation_and_description():
    assert MitigationConfig().describe() == {"techniques": "none"}
    config = MitigationConfig(techniques=("zne", "readout"), scale_factors=(1, 2, 3))
    assert config.describe() == {
        "techniques": "zne,readout",
        "scale_factors": "1,2,3",
        "folding": "global",
        "extrapolation": "richardson",
        "calibration_shots": 8192,
    }
    with pytest.raises(ValidationError, match="repeat"):
        MitigationConfig(techniques=("zne", "zne"))
    with pytest.raises(ValidationError, match="increasing"):
        MitigationConfig(techniques=("zne",), scale_factors=(1, 5, 3))
    with pytest.raises(ValidationError, match=">= 1"):
        MitigationConfig(scale_factors=(0.5, 1))
    with pytest.raises(ValidationError, match="at least 2"):
        MitigationConfig(techniques=("zne",), scale_factors=(1,))
    with pytest.raises(ValidationError, match="equally spaced"):
        MitigationConfig(
            techniques=("zne",),
            extrapolation="exponential",
            asymptote=None,
            scale_factors=(1, 2, 4),
        )
    with pytest.raises(ValidationError, match="techniques"):
        MitigationConfig(techniques=("magic",))


# ---------------------------------------------------------------- inside the Aer executor


def test_zne_and_readout_cut_the_error_of_noisy_expectations(ansatz):
    vc, x, w, exact = ansatz
    plain = AerExecutor(vc, precision=0.0, noise=NOISE, seed=1)
    error = np.abs(plain.expectations(x, w) - exact).mean()
    for extrapolation in ["richardson", "linear", "exponential"]:
        config = MitigationConfig(techniques=("zne", "readout"), extrapolation=extrapolation)
        mitigated = AerExecutor(vc, precision=0.0, noise=NOISE, seed=1, mitigation=config)
        got = mitigated.expectations(x, w)
        assert np.abs(got - exact).mean() < 0.5 * error, extrapolation
        assert np.all(np.abs(got) <= 1.0)


def test_local_folding_zne_also_cuts_the_error(ansatz):
    vc, x, w, exact = ansatz
    noise = NoiseConfig(kind="parametric", p1=0.005, p2=0.03)
    plain = AerExecutor(vc, precision=0.0, noise=noise).expectations(x, w)
    config = MitigationConfig(techniques=("zne",), folding="local", scale_factors=(1, 2, 3))
    got = AerExecutor(vc, precision=0.0, noise=noise, mitigation=config).expectations(x, w)
    assert np.abs(got - exact).mean() < 0.5 * np.abs(plain - exact).mean()


def test_readout_mitigation_alone_recovers_readout_only_noise(ansatz):
    vc, x, w, exact = ansatz
    model = NoiseModel(basis_gates=["ry", "cx"])
    confusion = [
        [[0.97, 0.03], [0.08, 0.92]],
        [[0.9, 0.1], [0.04, 0.96]],
        [[0.95, 0.05], [0.05, 0.95]],
    ]
    for q, matrix in enumerate(confusion):  # rows: prepared, columns: read
        model.add_readout_error(ReadoutError(matrix), [q])
    config = MitigationConfig(techniques=("readout",), calibration_shots=10**6)
    plain = AerExecutor(vc, precision=0.0, noise=model).expectations(x, w)
    executor = AerExecutor(vc, precision=0.0, noise=model, mitigation=config, seed=2)
    got = executor.expectations(x, w)
    a, b = executor.readout_calibration
    np.testing.assert_allclose(a, [0.89, 0.86, 0.9], atol=5e-3)  # 1 - P(1|0) - P(0|1)
    np.testing.assert_allclose(b, [0.05, -0.06, 0.0], atol=5e-3)  # P(0|1) - P(1|0)
    assert np.abs(plain - exact).max() > 0.02
    np.testing.assert_allclose(got, exact, atol=0.01)  # calibration shot noise only


def test_mitigated_parameter_shift_gradients_are_closer_to_the_exact_ones(ansatz):
    vc, x, w, _ = ansatz
    shift = np.pi / 2 * np.eye(len(w))
    exact_d_w = np.stack(
        [(exact_values(vc, x, w + s) - exact_values(vc, x, w - s)) / 2 for s in shift], axis=-1
    )
    config = MitigationConfig(techniques=("zne",), scale_factors=(1, 3, 5))
    _, plain = AerExecutor(vc, precision=0.0, noise=NOISE).jacobians(x, w, inputs_grad=False)
    mitigated = AerExecutor(vc, precision=0.0, noise=NOISE, mitigation=config)
    _, got = mitigated.jacobians(x, w, inputs_grad=False)
    assert np.abs(got - exact_d_w).mean() < 0.5 * np.abs(plain - exact_d_w).mean()


def test_mitigation_runs_in_one_call_and_counts_its_overhead(ansatz):
    vc, x, w, _ = ansatz
    config = MitigationConfig(techniques=("zne", "readout"), calibration_shots=500)
    executor = AerExecutor(vc, shots=1000, noise=NOISE, seed=3, mitigation=config)
    runs = []
    run = executor.estimator.run
    executor.estimator.run = lambda pubs, **kw: runs.append(len(pubs)) or run(pubs, **kw)
    executor.expectations(x, w)  # calibration first (1 call), then everything else (1 call)
    assert executor.calls == 2 and len(runs) == 2
    rows = len(x)
    # on a 3-qubit ring every light cone is the whole circuit: all observables run together,
    # Z strings in one measurement setting; x3 scale factors; calibration: 2 circuits
    over = executor.overhead()
    assert over.base_circuits == rows and over.base_shots == 1000 * rows
    assert over.circuits == 3 * rows + 2 and over.shots == 1000 * 3 * rows + 2 * 500
    assert over.extra_circuits == 2 * rows + 2 and over.extra_shots == 1000 * 2 * rows + 1000
    executor.expectations(x, w)  # calibrated already: one more call
    assert executor.calls == 3 and executor.overhead().circuits == 2 * 3 * rows + 2
    plain = AerExecutor(vc, shots=1000, noise=NOISE, seed=3)
    plain.jacobians(x, w, inputs_grad=False)
    assert plain.overhead() == Overhead(
        rows * (1 + 2 * vc.num_weights), 1000 * rows * (1 + 2 * vc.num_weights)
    ) + Overhead(0, 0, rows * (1 + 2 * vc.num_weights), 1000 * rows * (1 + 2 * vc.num_weights))


def test_mitigated_runs_repeat_with_the_seed_and_reseed_recalibrates(ansatz):
    vc, x, w, _ = ansatz
    config = MitigationConfig(techniques=("zne", "readout"), calibration_shots=2000)

    def make():
        return AerExecutor(vc, shots=2000, noise=NOISE, seed=4, mitigation=config)

    first, second = make(), make()
    np.testing.assert_array_equal(first.expectations(x, w), second.expectations(x, w))
    calibration = first.readout_calibration
    first.reseed(11)
    second.reseed(11)
    np.testing.assert_array_equal(first.expectations(x, w), second.expectations(x, w))
    assert not np.array_equal(first.readout_calibration[0], calibration[0])


def parity_circuit(n: int = 4, layers: int = 2) -> VariationalCircuit:
    """RXX/RYY layers on |0...0>: every gate flips qubits in pairs, so parity stays even."""
    slots = ParameterVector("x", n)
    weights = ParameterVector("theta", 2 * (n - 1) * layers)
    qc = QuantumCircuit(n)
    for i in range(0, n - 1, 2):
        qc.rxx(slots[i], i, i + 1)
        qc.ryy(slots[i + 1], i, i + 1)
    k = 0
    for _ in range(layers):
        for i in range(n - 1):
            qc.rxx(weights[k], i, i + 1)
            qc.ryy(weights[k + 1], i, i + 1)
            k += 2
    ops = tuple(SparsePauliOp.from_sparse_list([("Z", [i], 1.0)], n) for i in range(n))
    return VariationalCircuit(qc, slots, weights, np.arange(n), ops)


def test_parity_postselection_cuts_the_error_of_a_parity_conserving_circuit():
    vc = parity_circuit()
    rng = np.random.default_rng(7)
    x = rng.uniform(-np.pi, np.pi, (5, 4))
    w = rng.uniform(-np.pi, np.pi, vc.num_weights)
    exact = exact_values(vc, x, w)
    model = NoiseModel(basis_gates=["rxx", "ryy"])
    model.add_all_qubit_quantum_error(depolarizing_error(0.03, 2), ["rxx", "ryy"])
    plain = AerExecutor(vc, precision=0.0, noise=model).expectations(x, w)
    config = MitigationConfig(techniques=("parity",))
    got = AerExecutor(vc, precision=0.0, noise=model, mitigation=config).expectations(x, w)
    assert np.abs(got - exact).mean() < 0.7 * np.abs(plain - exact).mean()
    noiseless = AerExecutor(vc, precision=0.0, mitigation=config).expectations(x, w)
    np.testing.assert_allclose(noiseless, exact, atol=1e-10)  # nothing to discard


def test_parity_needs_observables_that_commute_with_it():
    vc = build_circuit(CircuitConfig(qubits=2, layers=1, observables=("XI", "IZ")))
    with pytest.raises(QuantumError, match="commute"):
        AerExecutor(vc, precision=0.0, mitigation=MitigationConfig(techniques=("parity",)))


def test_mitigation_on_a_device_snapshot_folds_in_the_device_basis():
    vc = build_circuit(CircuitConfig(qubits=2, layers=1))
    config = MitigationConfig(techniques=("zne", "readout"), calibration_shots=20000)
    noise = NoiseConfig(kind="device", device="generic:3")
    executor = AerExecutor(vc, precision=0.0, noise=noise, seed=5, mitigation=config)
    basis = set(executor.device.target.operation_names)
    for mitigated in executor._mitigated.values():
        for group in mitigated.groups:
            assert {inst.operation.name for inst in group.circuit.data} <= basis
    x, w = np.array([[0.3, -0.8], [1.1, 0.4]]), np.array([0.5, -1.2])
    exact = exact_values(vc, x, w)
    plain = AerExecutor(vc, precision=0.0, noise=noise, seed=5).expectations(x, w)
    got = executor.expectations(x, w)
    assert np.abs(got - exact).mean() < 0.5 * np.abs(plain - exact).mean()


def test_ibm_local_mode_mitigates_fake_manilas_readout():
    pytest.importorskip("qiskit_ibm_runtime", reason="the ibm extra is not installed")
    from quantum.executors.ibm import IBMExecutor

    vc = build_circuit(CircuitConfig(qubits=3, layers=1))
    rng = np.random.default_rng(8)
    x = rng.uniform(-1.0, 1.0, (3, 3))
    w = rng.uniform(-1.0, 1.0, vc.num_weights)
    exact = exact_values(vc, x, w)
    config = MitigationConfig(techniques=("readout",), calibration_shots=20000)
    plain = IBMExecutor(vc, backend="fake_manila", shots=20000, seed=3)
    mitigated = IBMExecutor(vc, backend="fake_manila", shots=20000, seed=3, mitigation=config)
    before = np.abs(plain.expectations(x, w) - exact).mean()
    after = np.abs(mitigated.expectations(x, w) - exact).mean()
    assert mitigated.calls == 2  # calibration, then the batch
    assert after < 0.5 * before
    over = mitigated.overhead()
    assert over.extra_circuits == 2 and over.extra_shots == 2 * 20000
