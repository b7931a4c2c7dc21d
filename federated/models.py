"""Classical model families and the flat-vector view of their weights.

Weights travel between driver, clients and aggregator as one flat float32
numpy vector in `state_dict` order: cheap to put in Ray's object store once,
to hash, sign and aggregate. Models hold no buffers (no batch norm), so the
parameters are the whole state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from federated.config import ModelConfig
from qfl.errors import TrainingError

if TYPE_CHECKING:
    from quantum.executors.base import Overhead


class MLP(nn.Module):
    """Fully connected classifier: flatten -> [Linear -> ReLU -> Dropout]* -> Linear."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, classes)
        return self.net(x)


class SmallCNN(nn.Module):
    """[Conv3x3 -> ReLU -> MaxPool2]* -> global average pool -> Linear, for (C, H, W) images."""

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(self.features(x))


class HybridModel(nn.Module):
    """Classical encoder -> variational quantum layer -> classical head (DESIGN.md).

    The encoder maps features to n angles in (-pi/2, pi/2) (tanh-squashed), the
    quantum layer returns n_outputs expectation values in [-1, 1], and a linear
    head turns them into class logits.
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], quantum, num_classes: int, *, seed: int
    ):
        super().__init__()
        from quantum.layer import QuantumLayer

        self.encoder = MLP(in_features, hidden, quantum.qubits, dropout=0.0)
        self.quantum = QuantumLayer(quantum, seed=seed)
        self.head = nn.Linear(self.quantum.num_outputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, classes)
        angles = torch.tanh(self.encoder(x)) * (torch.pi / 2)  # (B, n)
        return self.head(self.quantum(angles))

    def penalty(self) -> torch.Tensor:
        return self.quantum.penalty()


class VQCClassifier(nn.Module):
    """Features (already reduced to n) as angles -> quantum layer -> linear readout."""

    def __init__(self, in_features: int, quantum, num_classes: int, *, seed: int):
        super().__init__()
        from quantum.layer import QuantumLayer

        if in_features != quantum.qubits:
            raise TrainingError(
                f"vqc needs one feature per qubit: {in_features} features for "
                f"{quantum.qubits} qubits (set data.pca_components: {quantum.qubits})"
            )
        self.scale = quantum.input_scale
        self.quantum = QuantumLayer(quantum, seed=seed)
        self.readout = nn.Linear(self.quantum.num_outputs, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, n) -> (B, classes)
        return self.readout(self.quantum(self.scale * x.flatten(1)))

    def penalty(self) -> torch.Tensor:
        return self.quantum.penalty()


def build_model(
    config: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    seed: int,
    quantum=None,
) -> nn.Module:
    """Build a model whose initial weights depend only on `seed` (global RNG untouched).

    `quantum` (a `quantum.config.QuantumConfig`) is required for kinds hybrid and vqc.
    """
    features = int(np.prod(input_shape))
    if config.kind in ("hybrid", "vqc") and quantum is None:
        raise TrainingError(f"model.kind {config.kind} needs a quantum section")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.kind == "mlp":
            return MLP(features, config.hidden, num_classes, config.dropout)
        if config.kind == "hybrid":
            return HybridModel(features, config.hidden, quantum, num_classes, seed=seed)
        if config.kind == "vqc":
            return VQCClassifier(features, quantum, num_classes, seed=seed)
        if len(input_shape) != 3:
            raise TrainingError(f"cnn needs (C, H, W) inputs, got shape {input_shape}")
        return SmallCNN(input_shape[0], config.channels, num_classes, config.dropout)


def has_quantum_layer(model: nn.Module) -> bool:
    """True when `model` evaluates a variational circuit (hybrid, vqc)."""
    return isinstance(model, HybridModel | VQCClassifier)


def reseed(model: nn.Module, seed: int) -> None:
    """Restart the shot noise of every quantum layer in `model` from `seed`."""
    for module in model.modules():
        if module is not model and hasattr(module, "reseed"):
            module.reseed(seed)


def get_flat(model: nn.Module) -> np.ndarray:
    """All state tensors concatenated in state_dict order, float32, shape (P,)."""
    tensors = [t.detach().reshape(-1).to(torch.float32) for t in model.state_dict().values()]
    return torch.cat(tensors).numpy().copy()


def set_flat(model: nn.Module, flat: np.ndarray) -> None:
    """Load a flat vector produced by `get_flat` back into `model`, in place."""
    state = model.state_dict()
    total = sum(t.numel() for t in state.values())
    if flat.shape != (total,):
        raise TrainingError(f"weight vector has shape {flat.shape}, model needs ({total},)")
    source = torch.from_numpy(np.array(flat, dtype=np.float32))  # a writable copy
    offset = 0
    with torch.no_grad():
        for tensor in state.values():
            n = tensor.numel()
            tensor.copy_(source[offset : offset + n].view_as(tensor))
            offset += n


def weights_hash(flat: np.ndarray) -> str:
    """SHA-256 over the little-endian float32 bytes of a flat weight vector."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype="<f4").tobytes()).hexdigest()


def quantum_param_mask(model: nn.Module) -> np.ndarray:
    """(P,) bool: True at the entries of `get_flat(model)` that are quantum-circuit parameters.

    The hybrid aggregation rule (Eq. 7) shrinks only these entries of a noisy
    quantum update. Entries follow state_dict order, as in `get_flat`; every
    tensor of a `quantum.layer.QuantumLayer` submodule (its theta) is marked.
    """
    import sys

    state = model.state_dict()
    mask = np.zeros(sum(t.numel() for t in state.values()), dtype=bool)
    layer = sys.modules.get("quantum.layer")  # never imported: no quantum layer can exist
    if layer is None:
        return mask
    prefixes = [
        f"{name}." if name else ""
        for name, module in model.named_modules()
        if isinstance(module, layer.QuantumLayer)
    ]
    offset = 0
    for key, tensor in state.items():
        n = tensor.numel()
        mask[offset : offset + n] = any(key.startswith(p) for p in prefixes)
        offset += n
    return mask


def set_layers_active(model: nn.Module, layers: int | None) -> None:
    """Run every quantum layer of `model` with only its first `layers` layers (None: all).

    A client with a shallower device trains the truncated circuit; the theta
    entries of the other layers get no gradient (see `trained_mask`).
    """
    from quantum.layer import QuantumLayer

    for module in model.modules():
        if isinstance(module, QuantumLayer):
            module.set_layers_active(layers)


def trained_mask(model: nn.Module) -> np.ndarray:
    """(P,) bool over `get_flat(model)`: False at theta entries of inactive quantum layers.

    With every layer active it is all True; federated.layerwise.masked_average
    averages each entry over the clients whose mask holds it.
    """
    from quantum.layer import QuantumLayer

    inactive: dict[str, int] = {}  # state_dict key of a theta -> first untrained entry
    for name, module in model.named_modules():
        if isinstance(module, QuantumLayer):
            key = f"{name}.theta" if name else "theta"
            inactive[key] = module.layers_active * module.config.qubits
    state = model.state_dict()
    mask = np.ones(sum(t.numel() for t in state.values()), dtype=bool)
    offset = 0
    for key, tensor in state.items():
        if key in inactive:
            mask[offset + inactive[key] : offset + tensor.numel()] = False
        offset += tensor.numel()
    return mask


def quantum_overhead(model: nn.Module) -> Overhead:
    """Circuits and shots all quantum layers of `model` ran so far (zeros without any).

    Cumulative: subtract the snapshot taken before a task for that task's share.
    """
    from quantum.executors.base import Overhead
    from quantum.layer import QuantumLayer

    total = Overhead()
    for module in model.modules():
        if isinstance(module, QuantumLayer):
            total = total + module.overhead()
    return total
