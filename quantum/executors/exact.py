"""Exact executor: the batched torch statevector, differentiable end to end.

Every encoding slot and weight is one column of the simulator's `values`
(B, n_slots + P): slot columns are gathered from the features
(`inputs[:, slot_feature]`), weight columns are the weights broadcast over the
batch. Autograd then sums the gradients of re-uploaded slots back onto their
feature by itself, and `torch_forward` needs no bridge. Gradients use the
adjoint method by default (memory of a few states, whatever the depth).

Small real circuits on the CPU (the usual ansatz with RY encoding, up to
`quantum.fastpath.FAST_MAX_QUBITS` qubits) take the NumPy fast path with the
adjoint method: gathering the slots, broadcasting the weights, the simulation
and its backward (folding slot gradients onto features, summing weight
gradients over the batch) are then one autograd node, `_FastForward`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit
from quantum.executors.base import Executor
from quantum.fastpath import FastCircuit
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
        fast: bool = True,
    ):
        """fast=False keeps small real circuits on the torch paths too."""
        super().__init__(circuit)
        if dtype not in (torch.float32, torch.float64):
            raise QuantumError(f"exact executor dtype must be float32 or float64, got {dtype}")
        self.compiled = compile_circuit(circuit.circuit, [*circuit.slots, *circuit.weights])
        self.dtype = dtype
        self.device = None if device is None else torch.device(device)
        self.method: Method = method
        self._slot_feature = torch.as_tensor(circuit.slot_feature, dtype=torch.long)
        self._observables = tuple(pauli_terms(op, circuit.num_qubits) for op in circuit.observables)
        self.fast = fast
        slots = len(circuit.slots)  # (S, F) one-hot: slot gradients summed onto features
        self._fold = np.zeros((slots, circuit.num_features))
        self._fold[np.arange(slots), circuit.slot_feature] = 1.0

    @property
    def fast_path(self) -> FastCircuit | None:
        """The NumPy fast path that CPU inputs take, or None (torch statevector)."""
        if not self.fast or self.method != "adjoint":
            return None
        if self.device is not None and self.device.type != "cpu":
            return None
        return self.compiled.fast

    def _check(self, inputs: Tensor, weights: Tensor) -> None:
        features, num_weights = self.circuit.num_features, self.circuit.num_weights
        if inputs.dim() != 2 or inputs.shape[1] != features:
            raise QuantumError(f"inputs of shape {tuple(inputs.shape)}: expected (B, {features})")
        if weights.shape[-1] != num_weights:
            raise QuantumError(
                f"weights of shape {tuple(weights.shape)}: expected ({num_weights},)"
            )

    def _forward(self, inputs: Tensor, weights: Tensor) -> Tensor:
        """(B, F) features, (P,) or (B, P) per-sample weights -> (B, O) on the inputs'
        device and dtype."""
        fast = self.fast_path
        cpu = inputs.device.type == "cpu" and weights.device.type == "cpu"
        floats = inputs.dtype in _FLOATS and weights.dtype in _FLOATS
        if fast is not None and cpu and floats and fast.fits(inputs.shape[0]):
            return _FastForward.apply(inputs, weights, self, fast)
        if weights.dim() == 1:
            weights = weights.expand(inputs.shape[0], -1)
        device = inputs.device if self.device is None else self.device
        slots = inputs[:, self._slot_feature.to(inputs.device)]  # (B, n_slots)
        values = torch.cat((slots, weights.to(inputs.device, inputs.dtype)), dim=1)  # (B, S + P)
        values = values.to(device=device, dtype=self.dtype)
        fast = None if self.fast else False
        out = self.compiled.expectations(values, self._observables, self.method, fast=fast)
        return out.to(device=inputs.device, dtype=inputs.dtype)

    def torch_forward(self, inputs: Tensor, weights: Tensor) -> Tensor:
        """(B, F), (P,) -> (B, O), differentiable w.r.t. inputs and weights."""
        self._check(inputs, weights)
        if weights.dim() != 1:
            raise QuantumError(f"weights of shape {tuple(weights.shape)}: expected 1-D")
        return self._forward(inputs, weights)

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


_FLOATS = (torch.float32, torch.float64)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


class _FastForward(torch.autograd.Function):
    """ExactExecutor._forward on the NumPy fast path, as one autograd node."""

    @staticmethod
    def forward(ctx, inputs, weights, executor, fast):  # (B, F), (P,) | (B, P) -> (B, O)
        dtype = _NUMPY[executor.dtype]
        x, w = inputs.detach().numpy(), weights.detach().numpy()
        slot_feature = executor.circuit.slot_feature
        values = np.empty((x.shape[0], len(slot_feature) + w.shape[-1]), dtype=dtype)
        values[:, : len(slot_feature)] = x[:, slot_feature]
        values[:, len(slot_feature) :] = w
        out, ctx.saved = fast.forward(values, executor._observables)  # (B, O)
        ctx.executor, ctx.fast = executor, fast
        ctx.dtypes = inputs.dtype, weights.dtype
        ctx.weights_dim = weights.dim()
        return torch.from_numpy(out).to(inputs.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # (B, O) -> (B, F), (P,) | (B, P)
        saved = ctx.saved
        g = np.ascontiguousarray(grad_out.numpy(), dtype=saved[0].dtype)
        grads = ctx.fast.backward(saved, g)  # (B, S + P)
        slots = ctx.executor._fold.shape[0]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            fold = ctx.executor._fold.astype(grads.dtype, copy=False)
            grad_x = torch.from_numpy(grads[:, :slots] @ fold).to(ctx.dtypes[0])
        if ctx.needs_input_grad[1]:
            d_w = grads[:, slots:]
            d_w = d_w.sum(0) if ctx.weights_dim == 1 else np.ascontiguousarray(d_w)
            grad_w = torch.from_numpy(d_w).to(ctx.dtypes[1])
        return grad_x, grad_w, None, None
