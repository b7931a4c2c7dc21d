"""The federated config models, importable without torch.

The model and local-training sections of an experiment are validated by every command
(`qfl run`, `qfl sweep`, a bad config's error) and travel to every runner; they need
no torch, so validating a config does not pay for importing it. `federated.models` and
`federated.train` act on them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class ModelConfig(BaseModel):
    """Model kind and its classical shape (the quantum layer is configured by QuantumConfig).

    mlp and cnn are classical; hybrid is encoder MLP (hidden) -> quantum layer ->
    linear head; vqc is a variational quantum classifier on `qubits` features
    (reduce them first, e.g. data.pca_components) with a linear readout.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["mlp", "cnn", "hybrid", "vqc"] = "mlp"
    hidden: tuple[PositiveInt, ...] = Field((64,), description="MLP / hybrid encoder widths")
    channels: tuple[PositiveInt, ...] = Field((16, 32), description="CNN conv channels")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _cnn_has_convs(self) -> ModelConfig:
        if self.kind == "cnn" and not self.channels:
            raise ValueError("a cnn needs at least one conv layer in model.channels")
        return self


class TrainConfig(BaseModel):
    """Local training on each client."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
