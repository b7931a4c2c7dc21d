"""The quantum configuration models, importable without qiskit or torch.

`QuantumConfig` and the sections it holds (circuit shape, noise, mitigation,
compilation) cross process boundaries in every round (a client task names its
resource's executor): a process that only passes them on, such as the ledger
keeper or the aggregator, should not pay for importing qiskit and torch. The
modules that act on them (`quantum.circuits`, `quantum.noise`,
`quantum.mitigation`, `quantum.compile`, `quantum.layer`) import them from here.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from qfl.errors import QuantumError

# ---------------------------------------------------------------------- circuits

Pattern = Literal["linear", "ring", "full"]


class CircuitConfig(BaseModel):
    """Shape of the variational circuit: qubits, layers, entanglement, encoding, readout."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    qubits: int = Field(4, ge=1, le=32)
    layers: int = Field(2, ge=1)
    entanglement: Pattern | tuple[tuple[int, int], ...] = Field(
        "linear", description="linear, ring, full, or coupling-map edges [[control, target], ...]"
    )
    encoding: Literal["ry", "rx"] = "ry"
    reupload: bool = False
    observables: Literal["z"] | tuple[str, ...] = Field(
        "z", description="'z': Z on every qubit; or Pauli strings of length qubits"
    )

    @model_validator(mode="after")
    def _check_shape(self) -> CircuitConfig:
        n = self.qubits
        if not isinstance(self.entanglement, str):
            for a, b in self.entanglement:
                if not (0 <= a < n and 0 <= b < n) or a == b:
                    raise ValueError(f"entangling edge ({a}, {b}) is not a pair of {n} qubits")
        if not isinstance(self.observables, str):
            if not self.observables:
                raise ValueError("observables: give at least one Pauli string, or 'z'")
            for label in self.observables:
                if len(label) != n or set(label) - set("IXYZ"):
                    raise ValueError(f"observable {label!r} is not a Pauli string on {n} qubits")
        return self


def entangling_pairs(
    pattern: Pattern | tuple[tuple[int, int], ...], n: int
) -> list[tuple[int, int]]:
    """CNOT (control, target) pairs of one entangling block E_l, in application order."""
    if not isinstance(pattern, str):
        return [(int(a), int(b)) for a, b in pattern]
    if n < 2:
        return []
    if pattern == "linear":
        return [(i, i + 1) for i in range(n - 1)]
    if pattern == "ring":
        return [(i, (i + 1) % n) for i in range(n)] if n > 2 else [(0, 1)]
    if pattern == "full":
        return list(combinations(range(n), 2))
    raise QuantumError(f"unknown entanglement pattern {pattern!r} (linear, ring, full or edges)")


# ---------------------------------------------------------------------- noise

GENERIC_DEVICE = re.compile(r"^generic:(\d+)$")  # a generic device of N qubits
FAKE_DEVICE = re.compile(r"^fake_[a-z0-9_]+$")  # one of qiskit-ibm-runtime's fake backends


class NoiseConfig(BaseModel):
    """Which noise the simulator applies: none, a parametric model, or a device snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["none", "parametric", "device"] = "none"
    p1: float = Field(0.0, ge=0.0, le=1.0, description="1-qubit depolarizing probability")
    p2: float = Field(0.0, ge=0.0, le=1.0, description="2-qubit depolarizing probability")
    readout: float = Field(0.0, ge=0.0, le=0.5, description="symmetric readout bit-flip prob")
    t1_us: float | None = Field(None, gt=0.0, description="T1 relaxation time (microseconds)")
    t2_us: float | None = Field(None, gt=0.0, description="T2 dephasing time, <= 2 T1")
    gate_time_1q_ns: float = Field(50.0, gt=0.0, description="1-qubit gate duration (ns)")
    gate_time_2q_ns: float = Field(300.0, gt=0.0, description="2-qubit gate duration (ns)")
    device: str | None = Field(None, description="'fake_manila' (any fake backend) or 'generic:N'")

    @model_validator(mode="after")
    def _check(self) -> NoiseConfig:
        parametric = self.p1 or self.p2 or self.readout or self.t1_us or self.t2_us
        if self.kind != "parametric" and parametric:
            raise ValueError(
                f"p1/p2/readout/t1_us/t2_us need kind='parametric' (got {self.kind!r})"
            )
        if (self.t1_us is None) != (self.t2_us is None):
            raise ValueError("thermal relaxation needs both t1_us and t2_us")
        if self.t1_us is not None and self.t2_us is not None and self.t2_us > 2 * self.t1_us:
            raise ValueError(f"t2_us={self.t2_us} exceeds 2 * t1_us={2 * self.t1_us} (unphysical)")
        if self.kind == "device":
            if self.device is None:
                raise ValueError("kind='device' needs device: 'fake_<name>' or 'generic:N'")
            if not (GENERIC_DEVICE.match(self.device) or FAKE_DEVICE.match(self.device)):
                raise ValueError(f"device {self.device!r}: use 'fake_<name>' or 'generic:N'")
        elif self.device is not None:
            raise ValueError(f"device={self.device!r} needs kind='device'")
        return self

    def describe(self) -> dict[str, float | str]:
        """The parameters that matter for this kind, flat, for logging (see `describe`)."""
        return describe(self)


def describe(config: NoiseConfig) -> dict[str, float | str]:
    """The noise parameters that matter for `config.kind`, flat, for logging."""
    if config.kind == "none":
        return {"kind": "none"}
    if config.kind == "device":
        return {"kind": "device", "device": str(config.device)}
    out: dict[str, float | str] = {
        "kind": "parametric",
        "p1": config.p1,
        "p2": config.p2,
        "readout": config.readout,
    }
    if config.t1_us is not None and config.t2_us is not None:
        out |= {
            "t1_us": config.t1_us,
            "t2_us": config.t2_us,
            "gate_time_1q_ns": config.gate_time_1q_ns,
            "gate_time_2q_ns": config.gate_time_2q_ns,
        }
    return out


# ---------------------------------------------------------------------- mitigation

Technique = Literal["zne", "readout", "parity"]
Folding = Literal["global", "local"]
Extrapolation = Literal["richardson", "linear", "exponential"]


class MitigationConfig(BaseModel):
    """Which error mitigation a quantum resource applies, and its knobs (default: none)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    techniques: tuple[Technique, ...] = Field((), description="any of zne, readout, parity")
    scale_factors: tuple[float, ...] = Field(
        (1.0, 3.0, 5.0), description="zne: noise scale factors lambda_j >= 1, increasing"
    )
    folding: Folding = Field("global", description="zne: global or local unitary folding")
    extrapolation: Extrapolation = "richardson"
    asymptote: float | None = Field(
        0.0, description="exponential: E(inf); null fits it (3 equally spaced scale factors)"
    )
    calibration_shots: int = Field(8192, ge=1, description="readout: shots per calibration")
    parity: Literal["even", "odd"] = Field("even", description="parity: the conserved sector")

    @model_validator(mode="after")
    def _check(self) -> MitigationConfig:
        if len(set(self.techniques)) != len(self.techniques):
            raise ValueError(f"techniques {list(self.techniques)} repeat an entry")
        factors = self.scale_factors
        if any(f < 1.0 for f in factors):
            raise ValueError(f"scale_factors {list(factors)}: each must be >= 1")
        if any(b <= a for a, b in zip(factors, factors[1:], strict=False)):
            raise ValueError(f"scale_factors {list(factors)} must be strictly increasing")
        if "zne" in self.techniques:
            if len(factors) < 2:
                raise ValueError("zne needs at least 2 scale_factors")
            if self.extrapolation == "exponential" and self.asymptote is None:
                steps = np.diff(factors)
                if len(factors) != 3 or not np.isclose(steps[0], steps[1]):
                    raise ValueError(
                        "exponential extrapolation with a fitted asymptote needs exactly 3 "
                        f"equally spaced scale_factors, got {list(factors)}"
                    )
        return self

    @property
    def zne(self) -> bool:
        return "zne" in self.techniques

    @property
    def readout(self) -> bool:
        return "readout" in self.techniques

    @property
    def symmetry(self) -> bool:
        return "parity" in self.techniques

    @property
    def enabled(self) -> bool:
        return bool(self.techniques)

    def describe(self) -> dict[str, float | str]:
        """The settings that matter for the chosen techniques, flat, for logging."""
        if not self.techniques:
            return {"techniques": "none"}
        out: dict[str, float | str] = {"techniques": ",".join(self.techniques)}
        if self.zne:
            out |= {
                "scale_factors": ",".join(f"{f:g}" for f in self.scale_factors),
                "folding": self.folding,
                "extrapolation": self.extrapolation,
            }
            if self.extrapolation == "exponential":
                out["asymptote"] = "fitted" if self.asymptote is None else self.asymptote
        if self.readout:
            out["calibration_shots"] = self.calibration_shots
        if self.symmetry:
            out["parity"] = self.parity
        return out


# ---------------------------------------------------------------------- compile

CouplingName = Literal["line", "ring", "full", "heavy_hex"]
DEFAULT_BASIS = ("ry", "rz", "sx", "x", "cx")
MAX_LEVEL = 3


class CompileConfig(BaseModel):
    """Where a circuit is compiled to (a coupling map, or the executor's device) and D_max."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coupling: CouplingName | tuple[tuple[int, int], ...] | None = Field(
        None, description="aer without a device: route onto line, ring, full, heavy_hex or edges"
    )
    coupling_qubits: int | None = Field(
        None, ge=1, description="qubits of a named coupling map (default: the circuit's)"
    )
    depth_limit: int | None = Field(None, ge=1, description="Algorithm 1's D_max")
    optimization_level: int = Field(1, ge=0, le=MAX_LEVEL, description="first level tried")
    basis_gates: tuple[str, ...] = Field(DEFAULT_BASIS, description="gates of a coupling map")
    extra_trials: int = Field(4, ge=0, description="routing seeds tried at level 3 after the rest")

    @model_validator(mode="after")
    def _check(self) -> CompileConfig:
        if not isinstance(self.coupling, str) and self.coupling is not None:
            for a, b in self.coupling:
                if a == b or a < 0 or b < 0:
                    raise ValueError(f"coupling edge ({a}, {b}) is not a pair of qubits")
        if self.coupling_qubits is not None and self.coupling is None:
            raise ValueError("coupling_qubits needs a coupling")
        return self

    def describe(self) -> dict[str, float | str]:
        """The settings, flat, for logging."""
        coupling = self.coupling if isinstance(self.coupling, str | None) else "edges"
        return {
            "coupling": str(coupling),
            "depth_limit": "none" if self.depth_limit is None else self.depth_limit,
            "optimization_level": self.optimization_level,
        }


# ---------------------------------------------------------------------- layer

ExecutorName = Literal["exact", "aer", "ibm", "reference"]


class QuantumConfig(CircuitConfig):
    """Circuit shape plus who runs it, with how many shots and which noise."""

    executor: ExecutorName = "exact"
    shots: int | None = Field(1024, ge=1, description="aer/ibm shots per circuit; null: exact")
    noise: NoiseConfig = NoiseConfig()
    backend: str | None = Field(None, description="ibm: fake device (fake_manila) or device name")
    gradient: Literal["parameter_shift", "spsa"] = "parameter_shift"
    gamma: float = Field(0.0, ge=0.0, description="Eq. 2: weight of ||theta||^2")
    beta: float = Field(0.0, ge=0.0, description="Eq. 2: weight of the noise penalty N(theta)")
    input_scale: float = Field(1.0, gt=0.0, description="vqc: angle = input_scale * feature")
    precision: Literal["float32", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="exact executor: auto uses a GPU when torch has one"
    )
    token: SecretStr | None = Field(
        None, description="IBM Quantum token (prefer QISKIT_IBM_TOKEN in the environment)"
    )
    instance: str | None = Field(None, description="IBM Quantum instance (CRN), if needed")
    mitigation: MitigationConfig = Field(
        MitigationConfig(), description="aer/ibm: error mitigation (default none)"
    )
    compilation: CompileConfig = Field(
        CompileConfig(), description="aer/ibm: Algorithm 1 (coupling map for aer, D_max)"
    )

    @model_validator(mode="after")
    def _executor_fits(self) -> QuantumConfig:
        if self.executor == "ibm" and not self.backend:
            raise ValueError("executor ibm needs quantum.backend (e.g. fake_manila)")
        if self.executor in ("exact", "reference") and self.noise.kind != "none":
            raise ValueError(f"executor {self.executor} is noiseless: use aer or ibm for noise")
        if self.executor in ("exact", "reference") and self.mitigation.enabled:
            raise ValueError(f"executor {self.executor} is noiseless: mitigation needs aer or ibm")
        compiles = self.compilation != CompileConfig()
        if self.executor in ("exact", "reference") and compiles:
            raise ValueError(f"executor {self.executor} runs the logical circuit: no compilation")
        if self.compilation.coupling is not None and (
            self.executor == "ibm" or self.noise.kind == "device"
        ):
            raise ValueError("compilation.coupling is for aer without a device (it has its own)")
        if self.mitigation.symmetry and self.observables != "z":
            raise ValueError("mitigation parity needs observables 'z' (they commute with parity)")
        return self

    def circuit_config(self) -> CircuitConfig:
        return CircuitConfig(**{k: getattr(self, k) for k in CircuitConfig.model_fields})
