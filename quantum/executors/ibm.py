"""IBM Quantum through qiskit-ibm-runtime's EstimatorV2: a real device, or a fake one locally.

Needs the ``ibm`` extra (``pip install -e ".[ibm]"``); qiskit-ibm-runtime is
imported only here, and only when an `IBMExecutor` is built.

Local testing mode (no account, no network): name a fake backend,
``IBMExecutor(circuit, backend="fake_manila")``; the runtime simulates the
device's calibration snapshot with Aer, shot by shot, seeded by `seed`.

A real device: you need an IBM Quantum API key (and usually an instance CRN).

    export QISKIT_IBM_TOKEN=<your API key>
    export QISKIT_IBM_INSTANCE=<your instance CRN>   # optional
    executor = IBMExecutor.from_env(circuit, backend="ibm_brisbane", shots=4096)

or pass them yourself: ``IBMExecutor(circuit, backend="ibm_brisbane",
token=..., instance=...)`` (keep the token out of committed config files).
The token is read from the environment only in `from_env`. A real-device
executor without a token fails at once, before any network call. Every
`expectations` / `jacobians` is ONE runtime job (all parameter shifts of the
batch in one pub per group), so a batch costs one queue wait, not thousands.
The runtime's default error mitigation for the device applies (on hardware,
resilience level 1: readout-error mitigation); shots per pub are `shots`.

Circuits are compiled once, at construction, to the device's ISA by Algorithm 1
(quantum/compile.py: qiskit's preset pass managers plus a depth loop when
`compilation.depth_limit` is set), and the observables are moved onto the chosen
physical qubits; the parameter-shift path and the error mitigation
(`mitigation`) are those of `ShotExecutor`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from qiskit.providers import BackendV2

from qfl.errors import QuantumError, QuantumResourceUnavailable
from quantum.circuits import VariationalCircuit
from quantum.compile import CompileCache, CompiledCircuit
from quantum.config import CompileConfig, MitigationConfig
from quantum.executors.aer import GradientMethod, Group, ShotExecutor, compile_for
from quantum.noise import IBM_HINT, fake_backend

TOKEN_ENV = "QISKIT_IBM_TOKEN"
INSTANCE_ENV = "QISKIT_IBM_INSTANCE"


def import_runtime() -> Any:
    """The qiskit_ibm_runtime module, or QuantumResourceUnavailable with the install hint."""
    try:
        import qiskit_ibm_runtime
    except ImportError as exc:
        raise QuantumResourceUnavailable(
            f"the IBM executor needs qiskit-ibm-runtime: {IBM_HINT}"
        ) from exc
    return qiskit_ibm_runtime


def is_fake(backend: str) -> bool:
    """Fake backends ('fake_manila') run locally; any other name is a real device."""
    return backend.startswith("fake_")


def real_backend(
    runtime: Any, name: str, token: str | None, channel: str, instance: str | None
) -> BackendV2:
    """A device of the IBM Quantum service (this contacts IBM: needs a token and network)."""
    if not token:
        raise QuantumResourceUnavailable(
            f"IBM device {name!r} needs an IBM Quantum API token: pass token=... or set "
            f"{TOKEN_ENV} and use IBMExecutor.from_env (or pick a fake backend, e.g. 'fake_manila')"
        )
    try:
        service = runtime.QiskitRuntimeService(channel=channel, token=token, instance=instance)
        return service.backend(name)
    except Exception as exc:  # the runtime raises many kinds (auth, network, unknown device)
        raise QuantumResourceUnavailable(f"IBM device {name!r} is not available: {exc}") from exc


class IBMExecutor(ShotExecutor):
    """qiskit-ibm-runtime EstimatorV2 on a real IBM device or, locally, a fake one."""

    def __init__(
        self,
        circuit: VariationalCircuit,
        *,
        backend: str = "fake_manila",
        shots: int | None = 1024,
        seed: int = 0,
        token: str | None = None,
        channel: str = "ibm_quantum_platform",
        instance: str | None = None,
        gradient: GradientMethod = "parameter_shift",
        spsa_samples: int = 16,
        spsa_step: float = 0.1,
        optimization_level: int | None = None,
        mitigation: MitigationConfig | None = None,
        compilation: CompileConfig | None = None,
        cache: CompileCache | None = None,
    ):
        runtime = import_runtime()
        if shots is None or shots < 1:
            raise QuantumError(
                f"an IBM backend needs shots >= 1 (it has no exact mode), got {shots}"
            )
        self.local = is_fake(backend)
        if self.local:
            device = fake_backend(backend)
        else:
            device = real_backend(runtime, backend, token, channel, instance)
        compilation = compilation or CompileConfig()
        if compilation.coupling is not None:
            raise QuantumError("an IBM device has its own coupling map: drop compilation.coupling")
        if optimization_level is not None:
            compilation = compilation.model_copy(update={"optimization_level": optimization_level})
        cache = CompileCache() if cache is None else cache
        self.compiled: CompiledCircuit
        self.compiled, observables = compile_for(
            circuit, compilation, seed=seed, cache=cache, device=device
        )
        isa = self.compiled.circuit
        super().__init__(
            circuit,
            run_circuit=isa,
            observables=observables,
            seed=seed,
            gradient=gradient,
            spsa_samples=spsa_samples,
            spsa_step=spsa_step,
            lightcone=False,  # the device runs the circuit as transpiled
            mitigation=mitigation,
            physical_qubits=self.compiled.physical_qubits,
            target=device.target,
            cache=cache,
        )
        self.device = device
        self.target = device.target
        self.shots = shots
        with warnings.catch_warnings():
            # 0.50 deprecates EstimatorV2 in favour of a client-side Estimator; same interface
            warnings.simplefilter("ignore", DeprecationWarning)
            self.estimator = runtime.EstimatorV2(mode=self.device)
        self.estimator.options.default_shots = shots

    @classmethod
    def from_env(
        cls,
        circuit: VariationalCircuit,
        *,
        backend: str,
        env: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> IBMExecutor:
        """Like the constructor, with token and instance from QISKIT_IBM_TOKEN / _INSTANCE."""
        env = os.environ if env is None else env
        kwargs.setdefault("token", env.get(TOKEN_ENV) or None)
        kwargs.setdefault("instance", env.get(INSTANCE_ENV) or None)
        return cls(circuit, backend=backend, **kwargs)

    def _evaluate(
        self, batches: list[tuple[Group, np.ndarray]], shots: int | None, rng: np.random.Generator
    ) -> list[np.ndarray]:
        pubs = []
        for group, rows in batches:
            if group.columns.size:
                pubs.append((group.circuit, list(group.observables), rows[:, None, :]))
            else:  # nothing to bind: one evaluation, shared by the rows
                pubs.append((group.circuit, list(group.observables)))
        if self.local:
            # the local simulator takes a seed (0 would read as "unset")
            self.estimator.options.simulator.seed_simulator = int(rng.integers(1, 2**31))
        self.estimator.options.default_shots = shots if shots is not None else self.shots
        try:
            results = self.estimator.run(pubs).result()
        finally:
            self.estimator.options.default_shots = self.shots
        self.calls += 1
        out = []
        for (_, rows), result in zip(batches, results, strict=True):
            evs = np.asarray(result.data.evs, dtype=float)
            evs = evs.reshape(-1, evs.shape[-1])  # (rows or 1, O_g)
            out.append(np.broadcast_to(evs, (len(rows), evs.shape[-1])).copy())
        return out
