"""Classical model families and the flat-vector view of their weights.

Weights travel between driver, clients and aggregator as one flat float32
numpy vector in `state_dict` order: cheap to put in Ray's object store once,
to hash, sign and aggregate. Models hold no buffers (no batch norm), so the
parameters are the whole state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import nn

from qfl.errors import TrainingError


class ModelConfig(BaseModel):
    """Model family and its shape."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: Literal["mlp", "cnn"] = "mlp"
    hidden: tuple[PositiveInt, ...] = Field((64,), description="MLP hidden layer widths")
    channels: tuple[PositiveInt, ...] = Field((16, 32), description="CNN conv channels")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _cnn_has_convs(self) -> ModelConfig:
        if self.family == "cnn" and not self.channels:
            raise ValueError("a cnn needs at least one conv layer in model.channels")
        return self


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


def build_model(
    config: ModelConfig, input_shape: tuple[int, ...], num_classes: int, *, seed: int
) -> nn.Module:
    """Build a model whose initial weights depend only on `seed` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.family == "mlp":
            features = int(np.prod(input_shape))
            return MLP(features, config.hidden, num_classes, config.dropout)
        if len(input_shape) != 3:
            raise TrainingError(f"cnn needs (C, H, W) inputs, got shape {input_shape}")
        return SmallCNN(input_shape[0], config.channels, num_classes, config.dropout)


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
