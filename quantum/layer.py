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

where eps_g is the error rate of gate g of the circuit that actually runs
(the compiled one, swaps included, when the executor compiles for a device or
a coupling map) on the configured noise: depolarizing p1 / p2 and thermal
relaxation converted to an error per gate, readout error per measured qubit;
for a device snapshot, each gate's and each readout's own calibrated error.
Under a global-depolarizing approximation a noisy expectation is F * <O>, so
(1 - F) <O> is the bias noise adds to output k; N is its mean square over the
batch. It pushes the model away from relying on large expectation values that
noise damps most, is zero without noise, and needs no extra circuit
evaluations (it reuses the layer's outputs).

Heterogeneous depth: a layer built for L layers can run with only its first
L_k active (`layers_active`, `set_layers_active`): it evaluates the truncated
circuit on theta[:L_k n], so the remaining entries of theta get no gradient
and a client's update leaves them unchanged (federated/layerwise.py averages
each layer over the clients that trained it).
"""

from __future__ import annotations

import math

import torch
from qiskit import QuantumCircuit
from qiskit.transpiler import Target
from torch import nn

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit, build_circuit
from quantum.compile import CompileCache
from quantum.config import NoiseConfig, QuantumConfig
from quantum.executors.base import Executor, Overhead


def make_executor(
    config: QuantumConfig,
    circuit: VariationalCircuit,
    seed: int,
    cache: CompileCache | None = None,
) -> Executor:
    """The configured executor for `circuit` (heavy backends imported only when chosen).

    `cache` (shot-based executors) keeps compiled circuits; pass one to share it.
    """
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
            circuit,
            precision=precision,
            noise=config.noise,
            seed=seed,
            gradient=config.gradient,
            mitigation=config.mitigation,
            compilation=config.compilation,
            cache=cache,
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
        mitigation=config.mitigation,
        compilation=config.compilation,
        cache=cache,
    )


def circuit_fidelity(
    circuit: VariationalCircuit | QuantumCircuit,
    noise: NoiseConfig,
    *,
    target: Target | None = None,
    measured: tuple[int, ...] | None = None,
) -> float:
    """F = prod_g (1 - eps_g) over the circuit's gates and the readouts of `measured` qubits.

    `circuit` is what runs: the logical circuit, or its compilation (give the
    compiled `QuantumCircuit`). Parametric noise: eps is p1 / p2 (+ thermal
    relaxation) by gate size and `readout` per qubit. A device snapshot: eps is
    each gate's and each qubit's measurement error in the device's `target`
    (1.0 without a target). `measured` defaults to all of the circuit's qubits.
    """
    qc = circuit.circuit if isinstance(circuit, VariationalCircuit) else circuit
    qubits = tuple(range(qc.num_qubits)) if measured is None else measured
    if noise.kind == "device":
        return 1.0 if target is None else _device_fidelity(qc, target, qubits)
    if noise.kind != "parametric":
        return 1.0
    eps_1q, eps_2q = noise.p1, noise.p2
    if noise.t1_us is not None and noise.t2_us is not None:
        eps_1q += 1.0 - math.exp(-noise.gate_time_1q_ns * 1e-3 / noise.t2_us)
        eps_2q += 1.0 - math.exp(-noise.gate_time_2q_ns * 1e-3 / noise.t2_us)
    fidelity = (1.0 - noise.readout) ** len(qubits)
    for instruction in qc.data:
        if instruction.operation.name == "barrier":
            continue
        qubits_touched = len(instruction.qubits)
        fidelity *= (1.0 - eps_1q) if qubits_touched == 1 else (1.0 - eps_2q)
    return fidelity


def _device_fidelity(qc: QuantumCircuit, target: Target, measured: tuple[int, ...]) -> float:
    """prod (1 - error) over the gates (calibrated per qubit tuple) and measured qubits."""

    def error(name: str, qargs: tuple[int, ...]) -> float:
        if name not in target.operation_names:
            return 0.0
        props = target[name].get(qargs)
        return 0.0 if props is None or props.error is None else float(props.error)

    fidelity = 1.0
    for instruction in qc.data:
        if instruction.operation.name == "barrier":
            continue
        qargs = tuple(qc.find_bit(q).index for q in instruction.qubits)
        fidelity *= 1.0 - error(instruction.operation.name, qargs)
    for q in measured:
        fidelity *= 1.0 - error("measure", (q,))
    return fidelity


class QuantumLayer(nn.Module):
    """(B, n_features) angles -> (B, n_outputs) expectation values, theta trainable.

    theta holds all `config.layers` layers; with `layers_active` = L_k < layers
    only the first L_k run (theta[:L_k n]). Executors (and their compiled
    circuits, in one `CompileCache` the layer owns) are built once per depth used.
    """

    def __init__(self, config: QuantumConfig, *, seed: int, layers_active: int | None = None):
        super().__init__()
        self.config = config
        self.seed = seed
        self.compile_cache = CompileCache()
        self._depths: dict[int, tuple[VariationalCircuit, Executor, float]] = {}
        full = config.layers
        num_weights = full * config.qubits
        generator = torch.Generator().manual_seed(seed)
        init = (torch.rand(num_weights, generator=generator) * 2 - 1) * math.pi
        self.theta = nn.Parameter(init.to(torch.float32))
        self.last_outputs: torch.Tensor | None = None
        self.set_layers_active(layers_active)

    def set_layers_active(self, layers: int | None) -> None:
        """Run only the first `layers` layers (None: all); builds that executor once."""
        layers = self.config.layers if layers is None else int(layers)
        if not 1 <= layers <= self.config.layers:
            raise QuantumError(
                f"layers_active={layers}: the layer has 1..{self.config.layers} layers"
            )
        if layers not in self._depths:
            shape = self.config.circuit_config().model_copy(update={"layers": layers})
            circuit = build_circuit(shape)
            executor = make_executor(self.config, circuit, self.seed, self.compile_cache)
            fidelity = circuit_fidelity(
                executor.run_circuit,
                self.config.noise,
                target=executor.target,
                measured=executor.measured_qubits,
            )
            self._depths[layers] = (circuit, executor, fidelity)
        self.layers_active = layers
        self.circuit, self.executor, self.fidelity = self._depths[layers]

    @property
    def num_outputs(self) -> int:
        return self.circuit.num_outputs

    @property
    def active_theta(self) -> torch.Tensor:
        """theta of the active layers, (L_k n,)."""
        return self.theta[: self.circuit.num_weights]

    def forward(self, angles: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, O)
        if angles.shape[-1] != self.circuit.num_features:
            raise QuantumError(
                f"quantum layer expects {self.circuit.num_features} features, got {angles.shape}"
            )
        out = self.executor.torch_forward(angles, self.active_theta).to(angles.dtype)
        self.last_outputs = out
        return out

    def penalty(self) -> torch.Tensor:
        """gamma * ||theta||^2 + beta * N(theta) (Eq. 2), N from the last forward's outputs.

        Over the active layers only: the others are not trained.
        """
        total = self.config.gamma * (self.active_theta**2).sum()
        if self.config.beta > 0 and self.last_outputs is not None:
            noise_bias = (1.0 - self.fidelity) * self.last_outputs  # (B, O)
            total = total + self.config.beta * (noise_bias**2).mean()
        return total

    def reseed(self, seed: int) -> None:
        """Reseed the executors' shot noise (per client task, for reproducible runs)."""
        for _, executor, _ in self._depths.values():
            executor.reseed(seed)

    def overhead(self) -> Overhead:
        """Circuits and shots the layer's executors ran so far (see `Executor.overhead`)."""
        total = Overhead()
        for _, executor, _ in self._depths.values():
            total = total + executor.overhead()
        return total
