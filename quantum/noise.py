"""Noise for the shot-based executors: a parametric model or a device snapshot.

Two ways to describe the noise a simulated circuit sees:

* ``parametric``: depolarizing errors on every 1-qubit gate (probability ``p1``)
  and 2-qubit gate (``p2``), optionally composed with thermal relaxation
  (``t1_us``, ``t2_us`` and the gate durations), and a symmetric readout bit
  flip (``readout``). The same error sits on every qubit.
* ``device``: the calibration snapshot of a real device (`device_noise_model`).
  ``fake_<name>`` is any fake backend of
  qiskit-ibm-runtime (``fake_manila`` is ``FakeManilaV2``; install the ``ibm``
  extra), ``generic:N`` is qiskit's ``GenericBackendV2`` with N qubits and
  random (seeded) calibration data. Circuits must be transpiled to that
  backend before they run (the executors do it).

Every error comes from qiskit-aer itself (`depolarizing_error`,
`thermal_relaxation_error`, `ReadoutError`); this module only decides which
error goes on which gate.
"""

from __future__ import annotations

from typing import Literal

from qiskit.providers import BackendV2
from qiskit_aer.noise import (
    NoiseModel,
    ReadoutError,
    depolarizing_error,
    thermal_relaxation_error,
)
from qiskit_aer.noise import QuantumError as AerError

from qfl.errors import QuantumResourceUnavailable
from quantum.config import FAKE_DEVICE, GENERIC_DEVICE, NoiseConfig

# inverses included (sdg, sxdg, tdg): ZNE folding adds them, and they must be as noisy
ONE_QUBIT_GATES = ("rx", "ry", "rz", "h", "x", "y", "z", "s", "sdg", "sx", "sxdg", "t", "tdg")
TWO_QUBIT_GATES = ("cx", "cz", "swap", "ecr", "rxx", "ryy", "rzz")
IBM_HINT = 'pip install -e ".[ibm]"'


def build_noise_model(config: NoiseConfig, seed: int = 0) -> NoiseModel | None:
    """The qiskit-aer noise model of `config` (None for kind='none')."""
    if config.kind == "none":
        return None
    if config.kind == "device":
        assert config.device is not None  # checked by NoiseConfig
        return device_noise_model(device_backend(config.device, seed))
    return parametric_noise_model(config)


def device_noise_model(backend: BackendV2) -> NoiseModel:
    """Gate errors, thermal relaxation and readout errors of a device snapshot.

    qiskit-ibm-runtime fake backends publish their calibration as
    `properties()`; `NoiseModel.from_backend_properties` turns it into the very
    model their own simulator runs (asymmetric readout errors included, which
    `NoiseModel.from_backend` averages away). Other backends (GenericBackendV2)
    go through `NoiseModel.from_backend`.
    """
    properties = backend.properties() if callable(getattr(backend, "properties", None)) else None
    if properties is not None:
        return NoiseModel.from_backend_properties(properties)
    return NoiseModel.from_backend(backend)


def parametric_noise_model(config: NoiseConfig) -> NoiseModel:
    """Depolarizing (+ thermal relaxation) on every listed gate, symmetric readout flips."""
    model = NoiseModel(basis_gates=[*ONE_QUBIT_GATES, *TWO_QUBIT_GATES])
    one = _gate_error(config, qubits=1)
    two = _gate_error(config, qubits=2)
    if one is not None:
        model.add_all_qubit_quantum_error(one, list(ONE_QUBIT_GATES))
    if two is not None:
        model.add_all_qubit_quantum_error(two, list(TWO_QUBIT_GATES))
    if config.readout > 0:
        r = config.readout
        model.add_all_qubit_readout_error(ReadoutError([[1 - r, r], [r, 1 - r]]))
    return model


def _gate_error(config: NoiseConfig, qubits: Literal[1, 2]) -> AerError | None:
    """Depolarizing error of a gate on `qubits` qubits, then thermal relaxation of each qubit."""
    p = config.p1 if qubits == 1 else config.p2
    error = depolarizing_error(p, qubits) if p > 0 else None
    if config.t1_us is None or config.t2_us is None:
        return error
    time_ns = config.gate_time_1q_ns if qubits == 1 else config.gate_time_2q_ns
    # thermal_relaxation_error takes t1, t2 and the gate time in the same unit: ns here
    relax = thermal_relaxation_error(config.t1_us * 1e3, config.t2_us * 1e3, time_ns)
    if qubits == 2:
        relax = relax.expand(relax)
    return relax if error is None else error.compose(relax)


def device_backend(name: str, seed: int = 0) -> BackendV2:
    """The backend behind a device name: 'generic:N' or a qiskit-ibm-runtime fake backend."""
    generic = GENERIC_DEVICE.match(name)
    if generic:
        from qiskit.providers.fake_provider import GenericBackendV2

        return GenericBackendV2(num_qubits=int(generic.group(1)), seed=seed)
    if not FAKE_DEVICE.match(name):
        raise QuantumResourceUnavailable(
            f"unknown device {name!r}: use 'fake_<name>' or 'generic:N'"
        )
    return fake_backend(name)


def fake_backend(name: str) -> BackendV2:
    """`fake_manila` -> qiskit_ibm_runtime.fake_provider.FakeManilaV2() (or FakeManila)."""
    try:
        from qiskit_ibm_runtime import fake_provider
    except ImportError as exc:
        raise QuantumResourceUnavailable(
            f"device {name!r} needs qiskit-ibm-runtime: {IBM_HINT}"
        ) from exc
    camel = "".join(part.capitalize() for part in name.split("_"))  # FakeManila
    for class_name in (f"{camel}V2", camel):
        backend_class = getattr(fake_provider, class_name, None)
        if backend_class is not None:
            return backend_class()
    raise QuantumResourceUnavailable(
        f"no fake backend {name!r} in qiskit_ibm_runtime.fake_provider (tried {camel}V2, {camel})"
    )
