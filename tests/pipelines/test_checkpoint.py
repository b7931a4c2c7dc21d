"""Tests for pipelines.checkpoint: atomic save, load, and the rounds log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.checkpoint import (
    CHECKPOINT,
    PENDING,
    ROUNDS_LOG,
    Checkpoint,
    append_round,
    load_checkpoint,
    promote_checkpoint,
    read_rounds,
    save_checkpoint,
    save_pending,
    truncate_rounds,
)
from qfl.errors import QflError, RunError


@pytest.mark.parametrize(
    ("round_", "weights"),
    [
        (0, np.arange(7, dtype=np.float32) / 3),
        (12, np.random.default_rng(0).standard_normal(1000).astype(np.float32)),
        (3, np.array([np.nextafter(np.float32(1), np.float32(2)), -0.0, 1e-45], np.float32)),
        (1, np.zeros(0, dtype=np.float32)),
    ],
)
def test_save_load_round_trip(tmp_path: Path, round_: int, weights: np.ndarray) -> None:
    path = save_checkpoint(tmp_path, Checkpoint(round=round_, weights=weights))
    assert path == tmp_path / CHECKPOINT
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == round_
    assert isinstance(loaded.round, int)
    assert loaded.weights.dtype == np.float32
    assert loaded.weights.shape == weights.shape
    assert loaded.weights.tobytes() == weights.tobytes()


def test_save_is_atomic_and_leaves_no_temporary(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, Checkpoint(round=0, weights=np.ones(4, np.float32)))
    save_checkpoint(tmp_path, Checkpoint(round=1, weights=np.full(4, 2.0, np.float32)))
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 1
    np.testing.assert_array_equal(loaded.weights, np.full(4, 2.0, np.float32))


def test_saved_file_is_a_plain_npz(tmp_path: Path) -> None:
    weights = np.linspace(-1, 1, 5, dtype=np.float32)
    save_checkpoint(tmp_path, Checkpoint(round=4, weights=weights))
    with np.load(tmp_path / CHECKPOINT, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["round", "state", "weights"]
        assert int(npz["round"]) == 4 and str(npz["state"]) == "{}"
        np.testing.assert_array_equal(npz["weights"], weights)


def test_load_casts_to_float32(tmp_path: Path) -> None:
    weights = np.array([0.1, 0.2], dtype=np.float64)
    save_checkpoint(tmp_path, Checkpoint(round=2, weights=weights))
    loaded = load_checkpoint(tmp_path)
    assert loaded.weights.dtype == np.float32
    assert loaded.weights.tobytes() == weights.astype(np.float32).tobytes()


def test_load_without_checkpoint_raises_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="no checkpoint") as info:
        load_checkpoint(tmp_path)
    assert isinstance(info.value, QflError)
    assert str(tmp_path / CHECKPOINT) in str(info.value)


def test_append_round_writes_json_lines(tmp_path: Path) -> None:
    records = [
        {"round": 1, "test_accuracy": 0.5, "failures": []},
        {"round": 2, "test_accuracy": 0.75, "failures": [{"client_id": 3, "reason": "x"}]},
        {"round": 3, "test_loss": float("inf"), "note": "ünïcode"},
    ]
    for record in records:
        append_round(tmp_path, record)
    lines = (tmp_path / ROUNDS_LOG).read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(records)
    assert [json.loads(line) for line in lines] == records
    # keys are sorted, so the log is stable whatever the dict's insertion order
    assert list(json.loads(lines[1])) == sorted(records[1])


def test_append_round_appends_to_existing_log(tmp_path: Path) -> None:
    (tmp_path / ROUNDS_LOG).write_text('{"round": 0}\n', encoding="utf-8")
    append_round(tmp_path, {"round": 1})
    lines = (tmp_path / ROUNDS_LOG).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"round": 0}, {"round": 1}]


def test_driver_state_and_arrays_round_trip(tmp_path: Path) -> None:
    state = {"reliability": {"3": 0.5}, "dp_steps": 7}
    arrays = {"opt.m": np.arange(3, dtype=np.float32), "opt.v": np.ones(3, np.float32)}
    weights = np.zeros(3, np.float32)
    save_checkpoint(tmp_path, Checkpoint(round=7, weights=weights, state=state, arrays=arrays))
    loaded = load_checkpoint(tmp_path)
    assert loaded.round == 7 and loaded.state == state
    assert sorted(loaded.arrays) == ["opt.m", "opt.v"]
    np.testing.assert_array_equal(loaded.arrays["opt.m"], arrays["opt.m"])


def test_truncate_rounds_drops_uncommitted_and_torn_lines(tmp_path: Path) -> None:
    for r in (1, 2, 3):
        append_round(tmp_path, {"round": r, "test_accuracy": r / 10})
    with open(tmp_path / ROUNDS_LOG, "a", encoding="utf-8") as fh:
        fh.write('{"round": 4, "test_acc')  # the crash cut this line short
    kept = truncate_rounds(tmp_path, 2)
    assert [r["round"] for r in kept] == [1, 2]
    assert [r["round"] for r in read_rounds(tmp_path)] == [1, 2]
    with pytest.raises(RunError, match="lacks rounds"):
        truncate_rounds(tmp_path, 3)


def _two_checkpoints(tmp_path: Path) -> None:
    """Round 3 committed; round 4's checkpoint pending on ledger block 9."""
    save_checkpoint(tmp_path, Checkpoint(round=3, weights=np.full(5, 3.0, np.float32)))
    pending = Checkpoint(round=4, weights=np.full(5, 4.0, np.float32), state={"dp_steps": 4})
    assert save_pending(tmp_path, pending, ledger_height=9) == tmp_path / PENDING


@pytest.mark.parametrize("head", [9, 10])
def test_pending_checkpoint_whose_block_is_stored_is_the_committed_one(tmp_path, head):
    _two_checkpoints(tmp_path)
    loaded = load_checkpoint(tmp_path, ledger_head=head)
    assert loaded.round == 4 and loaded.state == {"dp_steps": 4}
    np.testing.assert_array_equal(loaded.weights, np.full(5, 4.0, np.float32))
    assert not (tmp_path / PENDING).exists()
    assert load_checkpoint(tmp_path).round == 4  # renamed into place: stays committed


@pytest.mark.parametrize("head", [8, None])
def test_pending_checkpoint_without_its_block_is_dropped(tmp_path, head):
    _two_checkpoints(tmp_path)
    loaded = load_checkpoint(tmp_path, ledger_head=head)
    assert loaded.round == 3
    np.testing.assert_array_equal(loaded.weights, np.full(5, 3.0, np.float32))
    assert not (tmp_path / PENDING).exists()


def test_torn_pending_checkpoint_is_dropped(tmp_path):
    _two_checkpoints(tmp_path)
    data = (tmp_path / PENDING).read_bytes()
    (tmp_path / PENDING).write_bytes(data[: len(data) // 2])  # the crash cut it short
    assert load_checkpoint(tmp_path, ledger_head=20).round == 3
    assert not (tmp_path / PENDING).exists()


def test_promote_replaces_the_committed_checkpoint(tmp_path):
    _two_checkpoints(tmp_path)
    assert promote_checkpoint(tmp_path) == tmp_path / CHECKPOINT
    assert load_checkpoint(tmp_path).round == 4
    assert not (tmp_path / PENDING).exists()
