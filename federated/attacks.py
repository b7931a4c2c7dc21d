"""Adversarial clients for robustness experiments, configured like everything else.

A fixed fraction of the registered clients are attackers for the whole run,
chosen from the run seed (anyone can re-derive who). An attacker trains
honestly and then corrupts what it sends, or trains on flipped labels:

- sign_flip: Delta -> -scale * Delta (pushes the model uphill)
- scaled:    Delta -> scale * Delta (model replacement / boosting)
- gaussian:  Delta -> N(0, noise_std^2) per entry, replacing the honest update
- label_flip: local labels y -> C - 1 - y before training (data poisoning)

The corrupted update is then signed like any other: a Byzantine client holds
a valid key, so the ledger admits it and only the aggregation rule can limit
its effect. Every draw comes from a generator passed in (`attack_rng`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from federated.data import ArrayDataset
from qfl.errors import DataError

ATTACKER_STREAM = 3  # SeedSequence word that separates attacker choice from other draws
ATTACK_NOISE_STREAM = 4

AttackKind = Literal["none", "sign_flip", "scaled", "gaussian", "label_flip"]
MODEL_POISONING = ("sign_flip", "scaled", "gaussian")


class AttackConfig(BaseModel):
    """Which clients attack and how: `fraction` of the clients, all run long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: AttackKind = "none"
    fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of clients that attack")
    scale: float = Field(1.0, gt=0.0, description="sign_flip: -scale * delta; scaled: scale")
    noise_std: float = Field(1.0, gt=0.0, description="gaussian: std of the replacing noise")

    @model_validator(mode="after")
    def _meaningful(self) -> AttackConfig:
        if self.kind != "none" and self.fraction <= 0.0:
            raise ValueError(f"attack kind {self.kind} needs fraction > 0")
        if self.kind == "none" and self.fraction > 0.0:
            raise ValueError("attack fraction > 0 needs a kind (sign_flip, scaled, ...)")
        if self.kind == "scaled" and self.scale == 1.0:
            raise ValueError("attack kind scaled with scale 1 sends the honest update")
        return self

    @property
    def corrupts_update(self) -> bool:
        """True when attackers change the update they send (not their data)."""
        return self.kind in MODEL_POISONING


def num_attackers(n_clients: int, fraction: float) -> int:
    """floor(fraction * n_clients): 20% of 10 clients is 2."""
    return math.floor(fraction * n_clients + 1e-9)


def select_attackers(n_clients: int, config: AttackConfig, seed: int) -> frozenset[int]:
    """The attacking client ids: a uniform choice of floor(fraction * n) from the run seed.

    A pure function of (n_clients, fraction, seed), drawn from its own
    SeedSequence stream so it never shares draws with client sampling.
    """
    if n_clients < 1:
        raise DataError(f"need at least one client, got {n_clients}")
    if config.kind == "none":
        return frozenset()
    rng = np.random.default_rng(np.random.SeedSequence([seed, ATTACKER_STREAM]))
    count = num_attackers(n_clients, config.fraction)
    return frozenset(int(k) for k in rng.choice(n_clients, size=count, replace=False))


def attack_rng(task_seed: int) -> np.random.Generator:
    """The generator of an attacker's draws in one round (gaussian noise).

    `task_seed` is the client's local seed for the round (`ClientTask.seed`,
    itself derived from run seed, round and client), on a separate stream
    from the local training's own draws.
    """
    return np.random.default_rng(np.random.SeedSequence([task_seed, ATTACK_NOISE_STREAM]))


def corrupt_delta(delta: np.ndarray, config: AttackConfig, rng: np.random.Generator) -> np.ndarray:
    """What an attacker sends instead of its honest update Delta (float32, same shape).

    label_flip and none return Delta unchanged (their attack is on the data).
    """
    d = np.asarray(delta, dtype=np.float32)
    if config.kind == "sign_flip":
        return (-config.scale * d).astype(np.float32)
    if config.kind == "scaled":
        return (config.scale * d).astype(np.float32)
    if config.kind == "gaussian":
        return rng.normal(0.0, config.noise_std, size=d.shape).astype(np.float32)
    return d.copy()


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Label flipping y -> C - 1 - y (Tolpegin et al. 2020's all-class variant); int64 out."""
    labels = np.asarray(y, dtype=np.int64)
    if num_classes < 2:
        raise DataError(f"label flipping needs >= 2 classes, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels outside [0, {num_classes}): {np.unique(labels).tolist()}")
    return (num_classes - 1) - labels


def poison_data(data: ArrayDataset, config: AttackConfig, num_classes: int) -> ArrayDataset:
    """An attacker's training data: labels flipped under label_flip, else `data` itself."""
    if config.kind != "label_flip":
        return data
    return ArrayDataset(data.x, flip_labels(data.y, num_classes))
