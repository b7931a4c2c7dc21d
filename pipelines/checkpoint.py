"""Per-round checkpoints in the run folder, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from qfl.errors import RunError

CHECKPOINT = "checkpoint.npz"
ROUNDS_LOG = "rounds.jsonl"


class Checkpoint(BaseModel):
    """The state after `round` rounds completed (round 0: initial weights)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    round: int
    weights: np.ndarray  # (P,) float32


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint.npz` via a temporary file and an atomic rename."""
    path = run_dir / CHECKPOINT
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as fh:
        np.savez(fh, round=np.int64(checkpoint.round), weights=checkpoint.weights)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    with np.load(path) as npz:
        return Checkpoint(round=int(npz["round"]), weights=npz["weights"].astype(np.float32))


def append_round(run_dir: Path, record: dict) -> None:
    """Append one round's metrics as a JSON line (a local, human-readable history)."""
    with open(run_dir / ROUNDS_LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
