"""Noise configs and the qiskit-aer noise models they build."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from qiskit_aer.noise import (
    NoiseModel,
    ReadoutError,
    depolarizing_error,
    thermal_relaxation_error,
)

from qfl.errors import QuantumResourceUnavailable
from quantum.config import NoiseConfig, describe
from quantum.noise import ONE_QUBIT_GATES, TWO_QUBIT_GATES, build_noise_model, device_backend


def _expected_model(one, two, readout: float = 0.0) -> NoiseModel:
    """The model built by hand, gate by gate, with qiskit-aer's own errors."""
    model = NoiseModel(basis_gates=[*ONE_QUBIT_GATES, *TWO_QUBIT_GATES])
    model.add_all_qubit_quantum_error(one, list(ONE_QUBIT_GATES))
    model.add_all_qubit_quantum_error(two, list(TWO_QUBIT_GATES))
    if readout:
        model.add_all_qubit_readout_error(
            ReadoutError([[1 - readout, readout], [readout, 1 - readout]])
        )
    return model


def test_parametric_model_puts_depolarizing_on_every_gate_and_readout_flips():
    config = NoiseConfig(kind="parametric", p1=0.001, p2=0.01, readout=0.02)
    model = build_noise_model(config)
    assert set(model.noise_instructions) == {*ONE_QUBIT_GATES, *TWO_QUBIT_GATES, "measure"}
    assert model.noise_qubits == []  # the same errors on every qubit
    assert model == _expected_model(depolarizing_error(0.001, 1), depolarizing_error(0.01, 2), 0.02)
    assert model != _expected_model(depolarizing_error(0.002, 1), depolarizing_error(0.01, 2), 0.02)
    (readout,) = [e for e in model.to_dict()["errors"] if e["type"] == "roerror"]
    assert readout["probabilities"] == [[0.98, 0.02], [0.02, 0.98]]


def test_thermal_relaxation_is_composed_with_depolarizing():
    config = NoiseConfig(kind="parametric", p1=0.001, p2=0.01, t1_us=50.0, t2_us=70.0)
    relax_1q = thermal_relaxation_error(50e3, 70e3, 50.0)  # ns
    relax_2q = thermal_relaxation_error(50e3, 70e3, 300.0)
    expected = _expected_model(
        depolarizing_error(0.001, 1).compose(relax_1q),
        depolarizing_error(0.01, 2).compose(relax_2q.expand(relax_2q)),
    )
    assert build_noise_model(config) == expected
    # relaxation alone (no depolarizing) still yields an error on every gate
    only_relax = build_noise_model(NoiseConfig(kind="parametric", t1_us=50.0, t2_us=60.0))
    assert {"ry", "cx"} <= set(only_relax.noise_instructions)


def test_unphysical_or_inconsistent_configs_are_rejected():
    with pytest.raises(ValidationError, match="2 \\* t1_us"):
        NoiseConfig(kind="parametric", t1_us=50.0, t2_us=101.0)
    with pytest.raises(ValidationError, match="both t1_us and t2_us"):
        NoiseConfig(kind="parametric", t1_us=50.0)
    with pytest.raises(ValidationError, match="kind='parametric'"):
        NoiseConfig(p1=0.01)
    with pytest.raises(ValidationError, match="needs device"):
        NoiseConfig(kind="device")
    with pytest.raises(ValidationError, match="generic:N"):
        NoiseConfig(kind="device", device="manila")
    with pytest.raises(ValidationError):
        NoiseConfig(kind="parametric", p1=1.5)
    with pytest.raises(ValidationError):
        NoiseConfig(kind="parametric", typo=0.1)
    NoiseConfig(kind="parametric", t1_us=50.0, t2_us=100.0)  # T2 = 2 T1 is allowed


def test_none_builds_no_model():
    assert build_noise_model(NoiseConfig()) is None
    assert describe(NoiseConfig()) == {"kind": "none"}


def test_generic_device_builds_a_seeded_snapshot():
    config = NoiseConfig(kind="device", device="generic:5")
    model = build_noise_model(config, seed=3)
    assert model.noise_qubits == [0, 1, 2, 3, 4]
    assert {"cx", "sx", "measure"} <= set(model.noise_instructions)
    assert build_noise_model(config, seed=3) == model
    assert build_noise_model(config, seed=4) != model
    assert device_backend("generic:5", seed=3).num_qubits == 5
    assert describe(config) == {"kind": "device", "device": "generic:5"}


def test_fake_device_snapshot():
    pytest.importorskip("qiskit_ibm_runtime", reason="the ibm extra is not installed")
    backend = device_backend("fake_manila")
    assert type(backend).__name__ == "FakeManilaV2" and backend.num_qubits == 5
    model = build_noise_model(NoiseConfig(kind="device", device="fake_manila"))
    assert {"cx", "sx", "measure"} <= set(model.noise_instructions)
    with pytest.raises(QuantumResourceUnavailable, match="no fake backend"):
        device_backend("fake_nowhere")


def test_describe_lists_the_parameters_for_logging():
    config = NoiseConfig(kind="parametric", p1=0.001, p2=0.01, t1_us=50.0, t2_us=70.0)
    assert describe(config) == {
        "kind": "parametric",
        "p1": 0.001,
        "p2": 0.01,
        "readout": 0.0,
        "t1_us": 50.0,
        "t2_us": 70.0,
        "gate_time_1q_ns": 50.0,
        "gate_time_2q_ns": 300.0,
    }


def test_config_describes_itself_flat():
    config = NoiseConfig(kind="parametric", p2=0.02, readout=0.02)
    assert (
        config.describe()
        == describe(config)
        == {
            "kind": "parametric",
            "p1": 0.0,
            "p2": 0.02,
            "readout": 0.02,
        }
    )
    assert all(isinstance(v, float | str) for v in config.describe().values())


def test_inverse_gates_that_folding_adds_are_as_noisy_as_their_gates():
    model = build_noise_model(NoiseConfig(kind="parametric", p1=0.01, p2=0.02))
    assert {"sdg", "sxdg", "tdg"} <= set(model.noise_instructions)
    assert {"rxx", "ryy", "rzz", "ecr"} <= set(model.noise_instructions)
