"""The quantum layer as a torch module, its configuration, and the Eq. 2 penalty.

`QuantumLayer` holds the trainable circuit parameters theta and evaluates the
circuit through an executor (exact, aer, ibm or reference); any executor plugs
in because all of them expose `torch_forward` (natively or through the
`QuantumFunction` bridge).

Local loss of a quantum client (Eq. 2):

    F_k(w, theta) = task loss + gamma * ||theta||^2 + beta * N(theta)

with the noise-aware penalty

    N(theta) = mean_{b,k} ((1 - F) * <O_k>_theta(x_b))^2,
    F = prod_g (1 - eps_g)   over the gates g of the circuit (readout counted per qubit),

where eps_g is the error rate of gate g on the configured noise model
(depolarizing p1 / p2, thermal relaxation converted to an error per gate,
readout error). Under a global-depolarizing approximation a noisy
expectation is F * <O>, so (1 - F) <O> is the bias noise adds to output k;
N is its mean square over the batch. It pushes the model away from relying
on large expectation values that noise damps most, is zero without noise,
and needs no extra circuit evaluations (it reuses the layer's outputs).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, SecretStr, model_validator
from torch import nn

from qfl.errors import QuantumError
from quantum.circuits import CircuitConfig, VariationalCircuit, build_circuit
from quantum.executors.base import Executor
from quantum.noise import NoiseConfig

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

    @model_validator(mode="after")
    def _executor_fits(self) -> QuantumConfig:
        if self.executor == "ibm" and not self.backend:
            raise ValueError("executor ibm needs quantum.backend (e.g. fake_manila)")
        if self.executor in ("exact", "reference") and self.noise.kind != "none":
            raise ValueError(f"executor {self.executor} is noiseless: use aer or ibm for noise")
        return self

    def circuit_config(self) -> CircuitConfig:
        return CircuitConfig(**{k: getattr(self, k) for k in CircuitConfig.model_fields})


def make_executor(config: QuantumConfig, circuit: VariationalCircuit, seed: int) -> Executor:
    """The configured executor for `circuit` (heavy backends imported only when chosen)."""
    if config.executor == "exact":
        from quantum.executors.exact import ExactExecutor

        dtype = torch.float64 if config.precision == "float64" else torch.float32
        device = config.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return ExactExecutor(circuit, dtype=dtype, device=device)
    if config.executor == "reference":
        from quantum.executors.reference import ReferenceExecutor

        return ReferenceExecutor(circuit)
    precision = 0.0 if config.shots is None else 1.0 / math.sqrt(config.shots)
    if config.executor == "aer":
        from quantum.executors.aer import AerExecutor

        return AerExecutor(
            circuit, precision=precision, noise=config.noise, seed=seed, gradient=config.gradient
        )
    from quantum.executors.ibm import IBMExecutor

    token = config.token.get_secret_value() if config.token is not None else None
    return IBMExecutor(
        circuit,
        backend=config.backend,
        shots=config.shots,
        seed=seed,
        token=token,
        instance=config.instance,
        gradient=config.gradient,
    )


def circuit_fidelity(circuit: VariationalCircuit, noise: NoiseConfig) -> float:
    """F = prod_g (1 - eps_g) over the circuit's gates and readouts, from parametric noise."""
    if noise.kind != "parametric":
        return 1.0
    eps_1q, eps_2q = noise.p1, noise.p2
    if noise.t1_us is not None and noise.t2_us is not None:
        eps_1q += 1.0 - math.exp(-noise.gate_time_1q_ns * 1e-3 / noise.t2_us)
        eps_2q += 1.0 - math.exp(-noise.gate_time_2q_ns * 1e-3 / noise.t2_us)
    fidelity = (1.0 - noise.readout) ** circuit.num_qubits
    for instruction in circuit.circuit.data:
        qubits = len(instruction.qubits)
        fidelity *= (1.0 - eps_1q) if qubits == 1 else (1.0 - eps_2q)
    return fidelity


class QuantumLayer(nn.Module):
    """(B, n_features) angles -> (B, n_outputs) expectation values, theta trainable."""

    def __init__(self, config: QuantumConfig, *, seed: int):
        super().__init__()
        self.config = config
        self.circuit = build_circuit(config.circuit_config())
        self.executor = make_executor(config, self.circuit, seed)
        generator = torch.Generator().manual_seed(seed)
        init = (torch.rand(self.circuit.num_weights, generator=generator) * 2 - 1) * math.pi
        self.theta = nn.Parameter(init.to(torch.float32))
        self.fidelity = circuit_fidelity(self.circuit, config.noise)
        self.last_outputs: torch.Tensor | None = None

    @property
    def num_outputs(self) -> int:
        return self.circuit.num_outputs

    def forward(self, angles: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, O)
        if angles.shape[-1] != self.circuit.num_features:
            raise QuantumError(
                f"quantum layer expects {self.circuit.num_features} features, got {angles.shape}"
            )
        out = self.executor.torch_forward(angles, self.theta).to(angles.dtype)
        self.last_outputs = out
        return out

    def penalty(self) -> torch.Tensor:
        """gamma * ||theta||^2 + beta * N(theta) (Eq. 2), N from the last forward's outputs."""
        total = self.config.gamma * (self.theta**2).sum()
        if self.config.beta > 0 and self.last_outputs is not None:
            noise_bias = (1.0 - self.fidelity) * self.last_outputs  # (B, O)
            total = total + self.config.beta * (noise_bias**2).mean()
        return total

    def reseed(self, seed: int) -> None:
        """Reseed the executor's shot noise (per client task, for reproducible runs)."""
        self.executor.reseed(seed)
