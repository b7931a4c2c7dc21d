"""Per-round checkpoints in the run folder, written atomically, and the round log.

A round is committed when its checkpoint is on disk: the weights after the round,
the server optimizer's state (FedAdam's m and v) and the driver's JSON state
(scheduler reliabilities and gains, resource states, the DP accountant's steps).
`rounds.jsonl` holds one line per round, written just before the checkpoint; a
resumed run drops the lines of rounds after its checkpoint (`truncate_rounds`), so
the log and MLflow never hold a round that did not commit.

With a ledger, a round's closing block is certified in the background while the next
round trains, and the round commits once that block is stored. Its checkpoint is written
first as `checkpoint.pending.npz`, naming that block's height, before the block can be
stored; the commit makes it `checkpoint.npz` (`promote_checkpoint`). A crash between the
block being stored and that rename leaves both files: `load_checkpoint` with the
ledger's head height then takes the pending one, whose block is on the ledger, so the
ledger is never a round ahead of the checkpoint a run resumes from.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from qfl.errors import RunError

CHECKPOINT = "checkpoint.npz"
PENDING = "checkpoint.pending.npz"  # a round whose ledger block is not yet known stored
ROUNDS_LOG = "rounds.jsonl"
_ARRAY_PREFIX = "array."


class Checkpoint(BaseModel):
    """The state after `round` rounds completed (round 0: initial weights)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    round: int
    weights: np.ndarray  # (P,) float32
    state: dict[str, Any] = Field(default_factory=dict)  # JSON-able driver state
    arrays: dict[str, np.ndarray] = Field(default_factory=dict)  # e.g. optimizer moments


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint.npz` via a temporary file, fsync and an atomic rename."""
    path = run_dir / CHECKPOINT
    tmp = path.with_suffix(".tmp.npz")
    _write(tmp, checkpoint, sync=True)
    os.replace(tmp, path)
    return path


def save_pending(run_dir: Path, checkpoint: Checkpoint, ledger_height: int) -> Path:
    """Write `checkpoint.pending.npz`: the state after a round whose closing block (at
    `ledger_height`) is still being certified. Not synced: `promote_checkpoint` does it
    off the critical path, before the rename that commits it."""
    path = run_dir / PENDING
    _write(path, checkpoint, sync=False, ledger_height=ledger_height)
    return path


def promote_checkpoint(run_dir: Path) -> Path:
    """Commit the pending checkpoint (its block is stored): fsync, rename over the last."""
    pending, path = run_dir / PENDING, run_dir / CHECKPOINT
    with open(pending, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(pending, path)
    return path


def _write(path: Path, checkpoint: Checkpoint, *, sync: bool, **extra: int) -> None:
    arrays = {f"{_ARRAY_PREFIX}{k}": v for k, v in checkpoint.arrays.items()}
    with open(path, "wb") as fh:
        np.savez(
            fh,
            round=np.int64(checkpoint.round),
            weights=checkpoint.weights,
            state=np.array(json.dumps(checkpoint.state, sort_keys=True)),
            **{k: np.int64(v) for k, v in extra.items()},
            **arrays,
        )
        if sync:
            fh.flush()
            os.fsync(fh.fileno())


def load_checkpoint(run_dir: Path, ledger_head: int | None = None) -> Checkpoint:
    """The last committed checkpoint.

    A pending checkpoint (module docstring) counts as committed when `ledger_head`, the
    run's ledger head height, shows its block stored; it is then renamed into place.
    Otherwise it is of a round that did not commit and is removed.
    """
    pending = run_dir / PENDING
    if pending.is_file():
        height = _pending_height(pending)
        if ledger_head is not None and height is not None and ledger_head >= height:
            promote_checkpoint(run_dir)
        else:
            pending.unlink()
    return _read(run_dir / CHECKPOINT)


def _pending_height(path: Path) -> int | None:
    try:
        with np.load(path) as npz:
            return int(npz["ledger_height"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # torn: it never committed
        return None


def _read(path: Path) -> Checkpoint:
    if not path.is_file():
        raise RunError(f"no checkpoint at {path}")
    try:
        with np.load(path) as npz:
            state = json.loads(str(npz["state"])) if "state" in npz.files else {}
            arrays = {
                k.removeprefix(_ARRAY_PREFIX): npz[k]
                for k in npz.files
                if k.startswith(_ARRAY_PREFIX)
            }
            return Checkpoint(
                round=int(npz["round"]),
                weights=npz["weights"].astype(np.float32),
                state=state,
                arrays=arrays,
            )
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise RunError(f"cannot read the checkpoint {path}: {exc}") from exc


def append_round(run_dir: Path, record: dict) -> None:
    """Append one round's metrics as a JSON line (a local, human-readable history)."""
    with open(run_dir / ROUNDS_LOG, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")


def read_rounds(run_dir: Path) -> list[dict]:
    """The round log's records, in order (empty if there is none)."""
    path = run_dir / ROUNDS_LOG
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise RunError(f"{path} is not valid JSON lines: {exc}") from exc


def truncate_rounds(run_dir: Path, upto: int) -> list[dict]:
    """Keep the log's records of rounds 1..`upto` (a torn last line is dropped too)."""
    path = run_dir / ROUNDS_LOG
    kept = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line the crash cut short
            if isinstance(record, dict) and 1 <= record.get("round", 0) <= upto:
                kept.append(record)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept), "utf-8")
        os.replace(tmp, path)
    if [r["round"] for r in kept] != list(range(1, upto + 1)):
        raise RunError(f"{path} lacks rounds of the checkpoint (has {[r['round'] for r in kept]})")
    return kept
