"""Algorithm 1 (quantum/compile.py): depth loop, report, equivalence, cache, executors."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from qiskit.quantum_info import Operator, Statevector

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit, build_circuit
from quantum.compile import (
    CompileCache,
    compile_nisq,
    compile_with,
    coupling_map,
    fingerprint,
    translate,
    two_qubit_count,
)
from quantum.config import CircuitConfig, CompileConfig, NoiseConfig, QuantumConfig
from quantum.executors.aer import AerExecutor
from quantum.layer import QuantumLayer, circuit_fidelity


def bound(vc: VariationalCircuit, circuit, seed: int = 0):
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-3, 3, vc.circuit.num_parameters)
    values = dict(zip(vc.circuit.parameters, angles, strict=True))
    return circuit.assign_parameters({p: values[p] for p in circuit.parameters})


@pytest.fixture(scope="module")
def ring8():
    return build_circuit(CircuitConfig(qubits=8, layers=3, entanglement="ring"))


def test_heavy_hex_compilation_meets_a_limit_the_routed_circuit_exceeds(ring8):
    limit = 100
    compiled = compile_with(ring8.circuit, CompileConfig(coupling="heavy_hex", depth_limit=limit))
    report = compiled.report
    assert report.depth_before == ring8.circuit.depth() and report.two_qubit_before == 24
    assert report.depth_routed > limit  # mapped and routed without optimisation: too deep
    assert report.met and report.depth_after == compiled.circuit.depth() <= limit
    assert report.two_qubit_after == two_qubit_count(compiled.circuit) < report.two_qubit_routed
    assert report.swaps > 0 and report.depth_limit == limit
    edges = set(coupling_map("heavy_hex", 8).get_edges())
    for inst in compiled.circuit.data:
        if len(inst.qubits) == 2:
            pair = tuple(compiled.circuit.find_bit(q).index for q in inst.qubits)
            assert pair in edges


def test_a_limit_no_compilation_meets_is_reported_not_raised(ring8):
    config = CompileConfig(coupling="line", depth_limit=10, extra_trials=2)
    report = compile_with(ring8.circuit, config).report
    assert not report.met and report.depth_after > 10
    # routed + levels 1, 2, 3 + 2 more routing seeds at level 3
    assert report.attempts == 1 + 3 + 2
    assert report.depth_after <= report.depth_routed  # the shallowest candidate is kept


def test_without_a_limit_one_compilation_at_the_given_level(ring8):
    report = compile_with(ring8.circuit, CompileConfig(coupling="line")).report
    assert report.attempts == 2 and report.optimization_level == 1 and report.met


def test_a_linear_ansatz_on_a_line_needs_no_swaps():
    vc = build_circuit(CircuitConfig(qubits=5, layers=2, entanglement="linear"))
    report = compile_with(vc.circuit, CompileConfig(coupling="line")).report
    assert report.swaps == 0 and report.two_qubit_after == report.two_qubit_before == 8


@pytest.mark.parametrize("limit", [None, 12])
@pytest.mark.parametrize("coupling", ["line", "heavy_hex"])
def test_compiled_circuit_is_equivalent_up_to_the_final_layout(coupling, limit):
    vc = build_circuit(CircuitConfig(qubits=4, layers=2, entanglement="ring", reupload=True))
    compiled = compile_with(vc.circuit, CompileConfig(coupling=coupling, depth_limit=limit))
    assert compiled.report.swaps > 0 or coupling == "heavy_hex"
    physical = Operator.from_circuit(bound(vc, compiled.circuit))
    assert physical.equiv(Operator(bound(vc, vc.circuit)))


def test_observables_follow_the_layout(ring8):
    vc = build_circuit(CircuitConfig(qubits=4, layers=2, entanglement="ring"))
    compiled = compile_with(vc.circuit, CompileConfig(coupling="line"))
    logical = Statevector(bound(vc, vc.circuit))
    physical = Statevector(bound(vc, compiled.circuit))
    for op in vc.observables:
        assert physical.expectation_value(compiled.apply_layout(op)).real == pytest.approx(
            logical.expectation_value(op).real, abs=1e-10
        )


def test_compile_needs_a_target_and_a_big_enough_map(ring8):
    with pytest.raises(QuantumError, match="target or a coupling"):
        compile_nisq(ring8.circuit)
    with pytest.raises(QuantumError, match="cannot hold"):
        compile_with(ring8.circuit, CompileConfig(coupling=((0, 1), (1, 2))))
    with pytest.raises(ValidationError, match="coupling_qubits needs a coupling"):
        CompileConfig(coupling_qubits=4)
    with pytest.raises(ValidationError, match="pair of qubits"):
        CompileConfig(coupling=((0, 0),))


def test_translate_puts_inverse_gates_back_in_the_basis():
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(1)
    qc.sx(0)
    qc.sxdg(0)
    out = translate(qc, basis_gates=["rz", "sx", "x"])
    assert set(out.count_ops()) <= {"rz", "sx", "x"}
    assert Operator(out).equiv(Operator(qc))
    assert translate(qc) is qc  # nothing to translate to


def test_cache_builds_each_circuit_and_device_once(ring8):
    cache = CompileCache()
    calls = []

    def build():
        calls.append(1)
        return len(calls)

    assert cache.get(ring8.circuit, "line", build) == 1
    assert cache.get(ring8.circuit.copy(), "line", build) == 1  # same structure: a hit
    assert cache.get(ring8.circuit, "heavy_hex", build) == 2
    other = build_circuit(CircuitConfig(qubits=8, layers=2, entanglement="ring"))
    assert fingerprint(other.circuit) != fingerprint(ring8.circuit)
    assert cache.get(other.circuit, "line", build) == 3
    assert cache.builds == 3 == cache.size


def test_aer_on_a_coupling_map_compiles_once_and_keeps_exact_values():
    vc = build_circuit(CircuitConfig(qubits=4, layers=2, entanglement="ring"))
    cache = CompileCache()
    config = CompileConfig(coupling="line", depth_limit=40)
    executor = AerExecutor(vc, precision=0.0, compilation=config, cache=cache, seed=1)
    assert executor.compiled is not None and executor.compiled.report.swaps > 0
    assert executor.run_circuit.count_ops()["cx"] > vc.circuit.count_ops()["cx"]
    x = np.random.default_rng(2).uniform(-2, 2, (3, 4))
    w = np.random.default_rng(3).uniform(-2, 2, vc.num_weights)
    reference = AerExecutor(vc, precision=0.0)
    for _ in range(2):  # training steps reuse the compiled circuit
        np.testing.assert_allclose(
            executor.expectations(x, w), reference.expectations(x, w), atol=1e-10
        )
        executor.jacobians(x, w)
    assert cache.builds == 1
    again = AerExecutor(vc, precision=0.0, compilation=config, cache=cache, seed=1)
    assert cache.builds == 1 and again.run_circuit is executor.run_circuit


def test_device_snapshot_compiles_under_a_depth_limit():
    vc = build_circuit(CircuitConfig(qubits=3, layers=2, entanglement="ring"))
    noise = NoiseConfig(kind="device", device="generic:5")
    executor = AerExecutor(
        vc, precision=0.0, noise=noise, compilation=CompileConfig(depth_limit=200), seed=2
    )
    report = executor.compiled.report
    assert report.met and report.depth_after <= 200
    names = set(executor.device.target.operation_names)
    assert set(executor.run_circuit.count_ops()) <= names


def test_fidelity_penalty_counts_the_compiled_gates():
    noise = NoiseConfig(kind="parametric", p1=0.001, p2=0.02, readout=0.01)
    logical = QuantumConfig(qubits=4, layers=2, entanglement="ring", executor="aer", noise=noise)
    routed = logical.model_copy(update={"compilation": CompileConfig(coupling="line")})
    plain, compiled = QuantumLayer(logical, seed=0), QuantumLayer(routed, seed=0)
    assert plain.fidelity == pytest.approx(circuit_fidelity(plain.circuit, noise))
    ops = compiled.executor.run_circuit.count_ops()
    two = sum(n for name, n in ops.items() if name in ("cx", "swap"))
    one = sum(ops.values()) - two
    expected = 0.999**one * 0.98**two * 0.99**4
    assert compiled.fidelity == pytest.approx(expected, rel=1e-12)
    assert compiled.fidelity < plain.fidelity  # the swaps cost fidelity


def test_device_fidelity_uses_the_calibrated_error_of_each_gate():
    noise = NoiseConfig(kind="device", device="generic:3")
    layer = QuantumLayer(QuantumConfig(qubits=2, layers=1, executor="aer", noise=noise), seed=0)
    target = layer.executor.target
    circuit = layer.executor.run_circuit
    expected = 1.0
    for inst in circuit.data:
        qargs = tuple(circuit.find_bit(q).index for q in inst.qubits)
        error = target[inst.operation.name][qargs].error
        expected *= 1.0 - (error or 0.0)
    for q in layer.executor.measured_qubits:
        expected *= 1.0 - target["measure"][(q,)].error
    assert layer.fidelity == pytest.approx(expected, rel=1e-12) and layer.fidelity < 1.0
