"""The one interface every executor implements, and the torch bridge to it.

An executor evaluates a `VariationalCircuit`:

    expectations(inputs (B, n_features), weights (P,)) -> (B, n_outputs)
    jacobians(inputs, weights) -> (d/d inputs (B, n_outputs, n_features),
                                   d/d weights (B, n_outputs, P))

Executors that are torch-native (exact) also offer `torch_forward`, which
keeps autograd; every other executor plugs into torch through
`QuantumFunction`, whose backward turns the Jacobians into vector-Jacobian
products. So every executor fits the same `nn.Module` (`QuantumLayer`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from quantum.circuits import VariationalCircuit


class Executor(ABC):
    """Evaluates expectation values of a variational circuit, and their Jacobians."""

    def __init__(self, circuit: VariationalCircuit):
        self.circuit = circuit

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
