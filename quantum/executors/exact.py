"""Exact executor: the batched torch statevector, differentiable end to end.

Every encoding slot and weight is one column of the simulator's `values`
(B, n_slots + P): slot columns are gathered from the features
(`inputs[:, slot_feature]`), weight columns are the weights broadcast over the
batch. Autograd then sums the gradients of re-uploaded slots back onto their
feature by itself, and `torch_forward` needs no bridge. Gradients use the
adjoint method by default (memory of a few states, whatever the depth).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit
from quantum.executors.base import Executor
from quantum.statevector import Method, compile_circuit, pauli_terms


class ExactExecutor(Executor):
    """Noiseless expectation values and exact gradients, on CPU or a GPU."""

    def __init__(
        self,
        circuit: VariationalCircuit,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        method: Method = "adjoint",
    ):
        super().__init__(circuit)
        if dtype not in (torch.float32, torch.float64):
            raise QuantumError(f"exact executor dtype must be float32 or float64, got {dtype}")
        self.compiled = compile_circuit(circuit.circuit, [*circuit.slots, *circuit.weights])
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.method: Method = method
        self._slot_feature = torch.as_tensor(circuit.slot_feature, dtype=torch.long)
        self._observables = tuple(pauli_terms(op, circuit.num_qubits) for op in circuit.observables)

    def _check(self, inputs: Tensor, weights: Tensor) -> None:
        features, num_weights = self.circuit.num_features, self.circuit.num_weights
        if inputs.dim() != 2 or inputs.shape[1] != features:
            raise QuantumError(f"inputs of shape {tuple(inputs.shape)}: expected (B, {features})")
        if weights.shape[-1] != num_weights:
            raise QuantumError(
                f"weights of shape {tuple(weights.shape)}: expected ({num_weights},)"
            )

    def _forward(self, inputs: Tensor, weights: Tensor) -> Tensor:
        """(B, F) features, (B, P) per-sample weights -> (B, O) on the inputs' device/dtype."""
        device = inputs.device if self.device is None else self.device
        slots = inputs[:, self._slot_feature.to(inputs.device)]  # (B, n_slots)
        values = torch.cat((slots, weights.to(inputs.device, inputs.dtype)), dim=1)  # (B, S + P)
        values = values.to(device=device, dtype=self.dtype)
        out = self.compiled.expectations(values, self._observables, self.method)  # (B, O)
        return out.to(device=inputs.device, dtype=inputs.dtype)

    def torch_forward(self, inputs: Tensor, weights: Tensor) -> Tensor:
        """(B, F), (P,) -> (B, O), differentiable w.r.t. inputs and weights."""
        self._check(inputs, weights)
        if weights.dim() != 1:
            raise QuantumError(f"weights of shape {tuple(weights.shape)}: expected 1-D")
        return self._forward(inputs, weights.expand(inputs.shape[0], -1))

    def expectations(self, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """<O_k> per sample: (B, F), (P,) -> (B, O) float64."""
        x = torch.as_tensor(np.asarray(inputs, np.float64))
        w = torch.as_tensor(np.asarray(weights, np.float64))
        with torch.no_grad():
            return self.torch_forward(x, w).numpy()

    def jacobians(
        self, inputs: np.ndarray, weights: np.ndarray, inputs_grad: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(d<O>/d inputs (B, O, F) or None, d<O>/d weights (B, O, P)), one backward per output."""
        x = torch.tensor(np.asarray(inputs, np.float64), requires_grad=inputs_grad)  # (B, F)
        w = torch.as_tensor(np.asarray(weights, np.float64))
        self._check(x, w)
        w = w.expand(x.shape[0], -1).clone().requires_grad_()  # (B, P): per-sample rows
        wrt = (x, w) if inputs_grad else (w,)
        with torch.enable_grad():  # also when called from a backward pass
            out = self._forward(x, w)  # (B, O)
            rows = [
                torch.autograd.grad(out[:, k].sum(), wrt, retain_graph=k + 1 < out.shape[1])
                for k in range(out.shape[1])
            ]
        d_w = torch.stack([r[-1] for r in rows], dim=1).numpy()  # (B, O, P)
        d_x = torch.stack([r[0] for r in rows], dim=1).numpy() if inputs_grad else None  # (B, O, F)
        return d_x, d_w
