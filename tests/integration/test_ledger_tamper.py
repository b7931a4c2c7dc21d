"""Tampering with any recorded field, row or byte of a finished run's ledger is detected.

All tests share one short run. Every test works on its own copy of that run's ledger, made
self-contained with SQLite's backup API (the run's ledger is in WAL mode: the backup reads
through the -wal file, so nothing committed there is lost). Tampering drops the
append-only triggers first, as an attacker with write access to the file would.
"""

from __future__ import annotations

import shutil
import sqlite3
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART

from ledger.encoding import LedgerIntegrityError
from ledger.verify import verify_ledger
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.run import run_experiment
from qfl.errors import QflError

pytestmark = pytest.mark.usefixtures("ray_local")

SEED = 20240611
# The schema of ledger/store.py (format qfl-ledger/1): table -> (primary key, columns).
SCHEMA = {
    "meta": (("key",), ("key", "value")),
    "blocks": (
        ("height",),
        (
            "height",
            "hash",
            "prev_hash",
            "merkle_root",
            "proposer",
            "round",
            "header",
            "certificate",
        ),
    ),
    "transactions": (("height", "idx"), ("height", "idx", "kind", "body")),
}
POSITIONS = {"meta": ("first", "last"), "blocks": ("first", "middle", "last")}
POSITIONS["transactions"] = POSITIONS["blocks"]
FIELD_CASES = [
    (table, column, position)
    for table, (_, columns) in SCHEMA.items()
    for column in columns
    for position in POSITIONS[table]
]
BYTE_FLIPS = 200


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger-tamper")
    config = load_config(
        QUICKSTART,
        ["federation.rounds=5", "federation.clients_per_round=6", f"output.runs_dir={tmp}/runs"],
    )
    summary = run_experiment(config, tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    return summary, tmp


@pytest.fixture(scope="module")
def pristine(finished_run):
    """A self-contained copy of the run's ledger (no -wal/-shm beside it)."""
    summary, tmp = finished_run
    target = tmp / "pristine" / "ledger.db"
    target.parent.mkdir()
    _backup(summary.ledger_path, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["ledger.db"]
    return target


@pytest.fixture
def copy(pristine, tmp_path):
    """A fresh copy of the pristine ledger, in its own directory, to tamper with."""

    def make(name: str = "ledger.db") -> Path:
        target = tmp_path / name
        shutil.copyfile(pristine, target)
        return target

    return make


# --------------------------------------------------------------------------- helpers


def _backup(source: Path, target: Path) -> None:
    src = sqlite3.connect(f"{Path(source).resolve().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _dump(path: Path, mode: str = "immutable=1") -> list[str]:
    """The logical content; `mode="mode=ro"` reads through a -wal file, as SQLite does."""
    db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?{mode}", uri=True)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def _all_rows(path: Path, table: str) -> list[tuple]:
    key, columns = SCHEMA[table]
    db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    try:
        query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {', '.join(key)}"
        return db.execute(query).fetchall()
    finally:
        db.close()


def _tamper(path: Path, *statements: tuple[str, tuple], restore: bool = True) -> None:
    """Drop the append-only triggers, run `statements` and put the triggers back, in one
    transaction (an attacker covering the tracks: a missing trigger alone is found)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'")
        triggers = triggers.fetchall()
        db.execute("BEGIN IMMEDIATE")
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        for sql, params in statements:
            db.execute(sql, params)
        if restore:
            for _, trigger_sql in triggers:
                db.execute(trigger_sql)
        db.execute("COMMIT")
    finally:
        db.close()


def _rng(*labels: object) -> np.random.Generator:
    return np.random.default_rng([SEED, zlib.crc32(repr(labels).encode())])


def _changed(value: object, rng: np.random.Generator) -> object:
    """A different value of the same SQLite type: int + 1, one bit flipped, one char changed."""
    if isinstance(value, int):
        return value + 1
    if isinstance(value, bytes):
        data = bytearray(value)
        data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if isinstance(value, str):
        position = int(rng.integers(len(value)))
        return value[:position] + chr(ord(value[position]) ^ 1) + value[position + 1 :]
    raise TypeError(f"unexpected column value {value!r}")


def _expect_invalid(path: Path, head: bytes | None = None) -> QflError:
    with pytest.raises(QflError) as info:
        verify_ledger(path, head=head)
    return info.value


# --------------------------------------------------------------------------- baseline


def test_the_copy_is_self_contained_and_verifies(finished_run, pristine):
    summary, _ = finished_run
    assert _dump(pristine) == _dump(summary.ledger_path, mode="mode=ro")
    report = verify_ledger(pristine, head=bytes.fromhex(summary.ledger_head))
    # genesis; round 0's open; rounds 0-3 close with the next open (6 updates + 2); round 4
    assert (report.height, report.blocks, report.transactions) == (6, 7, 1 + 1 + 4 * 8 + 7)
    assert report.rounds_closed == 5


def test_a_tampering_still_in_the_wal_is_not_ignored(copy):
    path = copy()
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_autocheckpoint=0")
        triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'")
        triggers = triggers.fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        db.execute("UPDATE blocks SET round = round + 1 WHERE height = 3")
        for _, trigger_sql in triggers:
            db.execute(trigger_sql)
        assert path.with_name("ledger.db-wal").stat().st_size > 0  # not checkpointed
        assert _expect_invalid(path).height == 3
    finally:
        db.close()


# --------------------------------------------------------------------------- 1. fields


@pytest.mark.parametrize(("table", "column", "position"), FIELD_CASES)
def test_changing_any_recorded_field_is_detected(copy, table, column, position):
    path = copy()
    rows = _all_rows(path, table)
    rng = _rng(table, column, position)
    if position == "first":
        row = rows[0]
    elif position == "last":
        row = rows[-1]
    else:
        row = rows[int(rng.integers(1, len(rows) - 1))]
    key, columns = SCHEMA[table]
    old = row[columns.index(column)]
    where = " AND ".join(f"{k} = ?" for k in key)
    params = tuple(row[columns.index(k)] for k in key)
    new = _changed(old, rng)
    assert new != old and type(new) is type(old)
    update = f"UPDATE {table} SET {column} = ? WHERE {where}"
    try:
        _tamper(path, (update, (new, *params)))
    except sqlite3.IntegrityError:  # +1 hits another row's key: use a free value instead
        assert column in key
        new = old + 1000
        _tamper(path, (update, (new, *params)))
    assert _all_rows(path, table) != rows  # the tampering took
    error = _expect_invalid(path)
    assert isinstance(error, LedgerIntegrityError), error
    if table != "meta" and column not in key:
        assert error.height == row[0], error  # names the tampered block


@pytest.mark.parametrize(
    ("table", "column", "height"),
    [("blocks", "certificate", 3), ("blocks", "proposer", 0), ("transactions", "body", 4)],
)
def test_cli_reports_a_changed_field(copy, capsys, table, column, height):
    path = copy()
    rng = _rng("cli", table, column)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
    old = db.execute(f"SELECT {column} FROM {table} WHERE height = ?", (height,)).fetchone()[0]
    db.close()
    new = _changed(old, rng)
    suffix = " AND idx = 0" if table == "transactions" else ""
    _tamper(path, (f"UPDATE {table} SET {column} = ? WHERE height = ?{suffix}", (new, height)))
    assert main(["ledger", "verify", str(path)]) == 1
    err = capsys.readouterr().err
    assert "INVALID" in err and f"block {height}" in err


# --------------------------------------------------------------------------- 2. deletions


@pytest.mark.parametrize(
    ("statements", "height"),
    [
        pytest.param(
            [
                ("DELETE FROM transactions WHERE height = 3", ()),
                ("DELETE FROM blocks WHERE height = 3", ()),
            ],
            3,
            id="block-3-with-its-transactions",
        ),
        pytest.param([("DELETE FROM blocks WHERE height = 4", ())], 4, id="block-4-row-only"),
        pytest.param(
            [("DELETE FROM transactions WHERE height = 2 AND idx = 3", ())], 2, id="tx-2.3"
        ),
        pytest.param(
            [("DELETE FROM transactions WHERE height = 4 AND idx = 0", ())], 4, id="tx-4.0"
        ),
        pytest.param(
            [("DELETE FROM transactions WHERE height = 6 AND idx = 6", ())], 6, id="tx-6.6-last"
        ),
        pytest.param([("DELETE FROM meta", ())], None, id="meta-row"),
    ],
)
def test_deleting_a_row_is_detected(copy, statements, height):
    path = copy()
    _tamper(path, *statements)
    error = _expect_invalid(path)
    assert isinstance(error, LedgerIntegrityError), error
    if height is not None:
        assert error.height == height, error


def test_cli_reports_a_deleted_block(copy, capsys):
    path = copy()
    _tamper(
        path,
        ("DELETE FROM transactions WHERE height = 2", ()),
        ("DELETE FROM blocks WHERE height = 2", ()),
    )
    assert main(["ledger", "verify", str(path)]) == 1
    assert "block 2" in capsys.readouterr().err


# --------------------------------------------------------------------------- 3. swaps


def _swap_transactions(path: Path, height: int, a: int, b: int) -> None:
    rows = {
        idx: (kind, body) for h, idx, kind, body in _all_rows(path, "transactions") if h == height
    }
    update = "UPDATE transactions SET kind = ?, body = ? WHERE height = ? AND idx = ?"
    _tamper(path, (update, (*rows[b], height, a)), (update, (*rows[a], height, b)))


BLOCK_FIELDS = ("hash", "prev_hash", "merkle_root", "proposer", "round", "header", "certificate")


def _swap_blocks(path: Path, a: int, b: int, columns: tuple[str, ...], with_txs: bool) -> None:
    rows = {row[0]: row for row in _all_rows(path, "blocks")}
    names = SCHEMA["blocks"][1]
    setter = ", ".join(f"{c} = ?" for c in columns)

    def values(height: int) -> tuple:
        return tuple(rows[height][names.index(c)] for c in columns)

    temp = tuple(
        b"\x00" * 32 if c == "hash" else v for c, v in zip(columns, values(a), strict=True)
    )
    statements = [
        (f"UPDATE blocks SET {setter} WHERE height = ?", (*temp, a)),  # frees a's hash
        (f"UPDATE blocks SET {setter} WHERE height = ?", (*values(a), b)),
        (f"UPDATE blocks SET {setter} WHERE height = ?", (*values(b), a)),
    ]
    if with_txs:
        statements += [
            ("UPDATE transactions SET height = -1 WHERE height = ?", (a,)),
            ("UPDATE transactions SET height = ? WHERE height = ?", (a, b)),
            ("UPDATE transactions SET height = ? WHERE height = -1", (b,)),
        ]
    _tamper(path, *statements)


@pytest.mark.parametrize(("height", "a", "b"), [(2, 1, 4), (2, 0, 6), (4, 0, 5), (6, 2, 3)])
def test_swapping_two_transactions_of_a_block_is_detected(copy, height, a, b):
    path = copy()
    before = _all_rows(path, "transactions")
    _swap_transactions(path, height, a, b)
    assert _all_rows(path, "transactions") != before
    error = _expect_invalid(path)
    assert isinstance(error, LedgerIntegrityError) and error.height == height, error


@pytest.mark.parametrize(
    ("a", "b", "columns", "with_txs"),
    [
        pytest.param(2, 4, ("hash", "header"), False, id="2-4-hash-header"),
        pytest.param(2, 4, BLOCK_FIELDS, False, id="2-4-all-columns"),
        pytest.param(2, 4, BLOCK_FIELDS, True, id="2-4-whole-blocks"),
        pytest.param(0, 1, ("hash", "header", "certificate"), False, id="0-1-signed"),
        pytest.param(5, 6, BLOCK_FIELDS, True, id="5-6-whole-blocks"),
    ],
)
def test_swapping_two_blocks_is_detected(copy, a, b, columns, with_txs):
    path = copy()
    _swap_blocks(path, a, b, columns, with_txs)
    error = _expect_invalid(path)
    assert isinstance(error, LedgerIntegrityError) and error.height == min(a, b), error


# --------------------------------------------------------------------------- 3b. schema

TRIGGERS = (
    "blocks_no_delete",
    "blocks_no_update",
    "meta_no_delete",
    "meta_no_update",
    "transactions_newest_block",
    "transactions_no_delete",
    "transactions_no_update",
)


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        *(
            pytest.param([(f"DROP TRIGGER {t}", ())], f"trigger {t}", id=f"drop-{t}")
            for t in TRIGGERS
        ),
        pytest.param(
            [("INSERT INTO meta VALUES ('note', 'block 3 is void')", ())],
            "meta rows ['note']",
            id="extra-meta-row",
        ),
        pytest.param(
            [("CREATE TABLE notes (height INTEGER, text TEXT)", ())],
            "table notes",
            id="extra-table",
        ),
        pytest.param(
            [("CREATE INDEX blocks_by_round ON blocks(round)", ())],
            "index blocks_by_round",
            id="extra-index",
        ),
        pytest.param(
            [("CREATE VIEW heads AS SELECT height, hash FROM blocks", ())],
            "view heads",
            id="extra-view",
        ),
    ],
)
def test_a_changed_schema_or_meta_is_detected(copy, capsys, statements, named):
    """The store's schema is fixed: a dropped append-only trigger (the trace of a rewrite),
    an added table, index or view, or an extra meta row makes the file no ledger."""
    path = copy()
    db = sqlite3.connect(path)
    try:
        for sql, params in statements:
            db.execute(sql, params)
        db.commit()
    finally:
        db.close()
    error = _expect_invalid(path)
    assert isinstance(error, LedgerIntegrityError), error
    assert named in str(error)
    assert main(["ledger", "verify", str(path)]) == 1
    assert "INVALID" in capsys.readouterr().err


def test_every_trigger_dropped_is_detected(copy):
    path = copy()
    _tamper(path, ("UPDATE blocks SET round = round WHERE height = 1", ()), restore=False)
    error = _expect_invalid(path)
    assert isinstance(error, LedgerIntegrityError)
    assert all(f"trigger {t}" in str(error) for t in TRIGGERS), error


# --------------------------------------------------------------------------- 4. bytes


def test_random_byte_flips_are_detected_or_logically_void(pristine, tmp_path):
    """A flip that leaves the logical content (iterdump) unchanged is no tampering."""
    rng = np.random.default_rng(SEED)
    original = pristine.read_bytes()
    reference = _dump(pristine)
    stats = {"logically unchanged": 0, "detected": 0, "unopenable, detected": 0}
    missed, crashes = [], []
    for flip in range(BYTE_FLIPS):
        offset, mask = int(rng.integers(len(original))), int(rng.integers(1, 256))
        data = bytearray(original)
        data[offset] ^= mask
        folder = tmp_path / f"flip{flip}"
        folder.mkdir()
        path = folder / "ledger.db"
        path.write_bytes(bytes(data))
        try:
            verify_ledger(path)
            verified = None
        except QflError as exc:
            verified = exc
        except Exception as exc:  # any other exception is a crash, not a verdict
            verified = exc
            crashes.append((offset, mask, repr(exc)))
        try:
            dump = _dump(path)
        except (sqlite3.DatabaseError, UnicodeDecodeError):  # not a readable database
            dump = None
        if dump == reference:
            stats["logically unchanged"] += 1
        elif verified is None:
            missed.append((offset, mask, "unopenable" if dump is None else "content changed"))
        else:
            stats["detected" if dump is not None else "unopenable, detected"] += 1
        shutil.rmtree(folder)
    print(
        f"\n{BYTE_FLIPS} byte flips of a {len(original)}-byte ledger: {stats}; "
        f"crashes (non-QflError exceptions): {crashes}"
    )
    assert not missed, f"verification passed {len(missed)} tampered files: {missed}"
    assert not crashes, f"verification crashed instead of reporting: {crashes}"
    assert sum(stats.values()) == BYTE_FLIPS
    assert stats["logically unchanged"] < BYTE_FLIPS // 2  # most flips do hit content


def test_a_non_utf8_schema_error_is_a_ledger_error(copy, capsys):
    path = copy()
    data = bytearray(path.read_bytes())
    offset = data.index(b"BEGIN SELECT RAISE") + len(b"BEGIN SELEC")  # a trigger's SQL, page 1
    data[offset] ^= 0xB3  # 'T' -> 0xE7: "SELEC\xe7" is a syntax error, quoted in the message
    path.write_bytes(bytes(data))
    assert isinstance(_expect_invalid(path), LedgerIntegrityError)
    assert main(["ledger", "verify", str(path)]) == 1
    assert "INVALID" in capsys.readouterr().err


# --------------------------------------------------------------------------- 5. truncation


@pytest.mark.parametrize("keep", [6, 5, 1], ids=["drop-1", "drop-2", "all-but-genesis"])
def test_truncation_verifies_alone_but_not_against_the_head(finished_run, copy, capsys, keep):
    summary, _ = finished_run
    path = copy()
    _tamper(
        path,
        ("DELETE FROM transactions WHERE height >= ?", (keep,)),
        ("DELETE FROM blocks WHERE height >= ?", (keep,)),
    )
    report = verify_ledger(path)  # a valid, shorter chain
    assert (report.height, report.blocks) == (keep - 1, keep)
    head = bytes.fromhex(summary.ledger_head)
    error = _expect_invalid(path, head=head)
    assert isinstance(error, LedgerIntegrityError) and "head" in str(error)
    assert main(["ledger", "verify", str(path), "--head", summary.ledger_head]) == 1
    assert "head" in capsys.readouterr().err


def test_dropping_every_block_is_detected(copy):
    path = copy()
    _tamper(path, ("DELETE FROM transactions", ()), ("DELETE FROM blocks", ()))
    assert isinstance(_expect_invalid(path), LedgerIntegrityError)
