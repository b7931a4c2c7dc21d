"""The one interface every executor implements, and the torch bridge to it.

An executor evaluates a `VariationalCircuit`:

    expectations(inputs (B, n_features), weights (P,)) -> (B, n_outputs)
    jacobians(inputs, weights) -> (d/d inputs (B, n_outputs, n_features),
                                   d/d weights (B, n_outputs, P))

Executors that are torch-native (exact) also offer `torch_forward`, which
keeps autograd; every other executor plugs into torch through
`QuantumFunction`, whose backward turns the Jacobians into vector-Jacobian
products. So every executor fits the same `nn.Module` (`QuantumLayer`).

Every executor also says what it ran (`overhead`): circuits and shots so far,
and what the same calls would have cost without error mitigation; exact
executors run no circuits and report zeros.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from qiskit import QuantumCircuit
    from qiskit.transpiler import Target

    from quantum.circuits import VariationalCircuit


@dataclass(frozen=True)
class Overhead:
    """Circuits and shots an executor ran, against what it would have run unmitigated.

    A circuit is one bound circuit in one measurement setting (qubit-wise
    commuting Pauli strings share it); shots are circuits x shots per circuit
    (0 for exact expectation values). Readout calibration counts as mitigation.
    Counters are cumulative: subtract two snapshots for one round's share.
    """

    circuits: int = 0
    shots: int = 0
    base_circuits: int = 0  # without mitigation
    base_shots: int = 0

    @property
    def extra_circuits(self) -> int:
        return self.circuits - self.base_circuits

    @property
    def extra_shots(self) -> int:
        return self.shots - self.base_shots

    def __add__(self, other: Overhead) -> Overhead:
        return Overhead(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def __sub__(self, other: Overhead) -> Overhead:
        return Overhead(*(a - b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[int, int, int, int]:
        return (self.circuits, self.shots, self.base_circuits, self.base_shots)

    def as_dict(self) -> dict[str, int]:
        """Flat counters (extra_* included), e.g. for MLflow metrics."""
        return asdict(self) | {
            "extra_circuits": self.extra_circuits,
            "extra_shots": self.extra_shots,
        }


class Executor(ABC):
    """Evaluates expectation values of a variational circuit, and their Jacobians.

    `run_circuit` is what actually runs (the logical circuit, or its compilation
    for a device or coupling map), `target` the device target it was compiled
    for (None for none), `measured_qubits` the qubits its observables read; the
    Eq. 2 penalty counts the gates of the first with the error rates of the second.
    """

    def __init__(self, circuit: VariationalCircuit):
        self.circuit = circuit
        self.run_circuit: QuantumCircuit = circuit.circuit
        self.target: Target | None = None
        self.measured_qubits: tuple[int, ...] = tuple(range(circuit.num_qubits))

    @abstractmethod
    def expectations(self, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """<O_k> for every sample: (B, n_features), (P,) -> (B, n_outputs) float64."""

    @abstractmethod
    def jacobians(
        self, inputs: np.ndarray, weights: np.ndarray, inputs_grad: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(d<O>/d inputs (B, n_outputs, n_features), d<O>/d weights (B, n_outputs, P)).

        With `inputs_grad=False` the first is None and shot-based executors skip the
        circuits that only the input gradient needs (data features need no gradient).
        """

    def reseed(self, seed: int) -> None:  # noqa: B027
        """Restart the executor's randomness (shot noise) from `seed`; exact executors ignore it."""

    def overhead(self) -> Overhead:
        """Circuits and shots run so far (and without mitigation); zeros when none run."""
        return Overhead()

    def torch_forward(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(B, n_features), (P,) -> (B, n_outputs), differentiable in both arguments."""
        return QuantumFunction.apply(inputs, weights, self)


class QuantumFunction(torch.autograd.Function):
    """Autograd bridge for executors that are not torch-native (aer, ibm)."""

    @staticmethod
    def forward(ctx, inputs: torch.Tensor, weights: torch.Tensor, executor: Executor):
        x = inputs.detach().cpu().double().numpy()
        w = weights.detach().cpu().double().numpy()
        ctx.executor = executor
        ctx.save_for_backward(inputs, weights)
        out = executor.expectations(x, w)  # (B, O)
        return torch.as_tensor(out, dtype=inputs.dtype, device=inputs.device)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        inputs, weights = ctx.saved_tensors
        x = inputs.detach().cpu().double().numpy()
        w = weights.detach().cpu().double().numpy()
        d_x, d_w = ctx.executor.jacobians(x, w, ctx.needs_input_grad[0])  # (B,O,F), (B,O,P)
        g = grad_out.detach().cpu().double().numpy()  # (B, O)
        grad_x = np.einsum("bo,bof->bf", g, d_x) if ctx.needs_input_grad[0] else None
        grad_w = np.einsum("bo,bop->p", g, d_w) if ctx.needs_input_grad[1] else None
        as_tensor = lambda a, like: (  # noqa: E731
            None if a is None else torch.as_tensor(a, dtype=like.dtype, device=like.device)
        )
        return as_tensor(grad_x, inputs), as_tensor(grad_w, weights), None
