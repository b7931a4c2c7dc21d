"""The SQLite store: round trips, append rules, append-only, crash safety, tamper detection."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ledger.encoding import digest, encode_value
from ledger.records import (
    ZERO_HASH,
    Block,
    Fallback,
    Genesis,
    Rejection,
    RoundClose,
    RoundOpen,
    UnsignedUpdate,
    encode_header,
    encode_tx,
    make_block,
)
from ledger.store import (
    BlockNotFoundError,
    LedgerIntegrityError,
    LedgerReadOnlyError,
    LedgerStore,
    open_readonly,
    verify_chain,
)
from qfl.errors import QflError

REPO = Path(__file__).resolve().parents[2]


def _update(client: int, rnd: int) -> UnsignedUpdate:
    return UnsignedUpdate(
        client_id=client,
        round=rnd,
        nonce=bytes([client, rnd]) * 8,
        delta_digest=digest(b"delta %d %d" % (client, rnd)),
        num_examples=100 + client,
        path="classical",
        metrics={"loss": 700_000 - rnd},
    )


def _round_txs(rnd: int) -> list:
    return [
        RoundOpen(
            round=rnd,
            beacon=digest(b"%d" % rnd),
            sampled=[0, 1, 2],
            plan={0: "classical", 1: "quantum", 2: "quantum"},
        ),
        _update(0, rnd).signed(b"sig0"),
        _update(1, rnd).signed(b"sig1"),
        Rejection(client_id=2, round=rnd, nonce=b"\x02" * 16, rule="bad_signature", detail=""),
        Fallback(client_id=1, round=rnd, resource="aer", reason="out of memory"),
    ]


def _close(rnd: int) -> RoundClose:
    return RoundClose(
        round=rnd,
        aggregate_weights_digest=digest(b"w%d" % rnd),
        accepted=[0, 1],
        metrics={"acc": 900_000 + rnd},
    )


def _next(prev: Block, rnd: int, txs: list) -> Block:
    return make_block(
        height=prev.height + 1,
        prev_hash=prev.hash,
        proposer=rnd % 2,
        round=rnd,
        transactions=txs,
        certificate=[(1, b"q")],
    )


def _chain(rounds: int = 3) -> list[Block]:
    """Genesis, then per round a block of round traffic and a block closing the round."""
    genesis = Genesis(
        run_id="run",
        config_hash=digest(b"cfg"),
        crypto_backend="cryptography",
        validators=[(0, b"v0"), (1, b"v1")],
        clients=[(0, b"c0"), (1, b"c1"), (2, b"c2")],
    )
    blocks = [
        make_block(
            height=0,
            prev_hash=ZERO_HASH,
            proposer=0,
            round=0,
            transactions=[genesis],
            certificate=[(0, b"q0"), (1, b"q1")],
        )
    ]
    for rnd in range(1, rounds + 1):
        blocks.append(_next(blocks[-1], rnd, _round_txs(rnd)))
        blocks.append(_next(blocks[-1], rnd, [_close(rnd)]))
    return blocks


@pytest.fixture
def chain() -> list[Block]:
    return _chain()


@pytest.fixture
def ledger(tmp_path, chain) -> Path:
    path = tmp_path / "ledger.db"
    with LedgerStore(path) as store:
        for block in chain:
            store.append(block)
    return path


def _tamper(path: Path, sql: str, params: tuple = (), *, restore: bool = True) -> None:
    """Change the file as an attacker would: drop the triggers, write, put them back."""
    conn = sqlite3.connect(path)
    triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for name, _ in triggers:
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute(sql, params)
    if restore:
        for _, trigger_sql in triggers:
            conn.execute(trigger_sql)
    conn.commit()
    conn.close()


def _column(path: Path, sql: str, params: tuple = ()):
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchone()[0]
    finally:
        conn.close()


def _verify_fails(path: Path) -> LedgerIntegrityError:
    with open_readonly(path) as store, pytest.raises(LedgerIntegrityError) as info:
        verify_chain(store)
    return info.value


# --------------------------------------------------------------------------- round trips


def test_round_trip_of_every_transaction_kind(ledger, chain):
    kinds = {tx.kind for block in chain for tx in block.transactions}
    assert kinds == {"genesis", "round_open", "update", "rejection", "fallback", "round_close"}
    with LedgerStore(ledger) as store:  # reopened
        assert store.head() == (chain[-1].height, chain[-1].hash)
        assert [store.block(b.height) for b in chain] == chain
        assert list(store.blocks()) == chain
        assert verify_chain(store) == (chain[-1].height, chain[-1].hash)
    with open_readonly(ledger) as store:
        assert verify_chain(store) == (chain[-1].height, chain[-1].hash)
        assert list(store.blocks()) == chain


def test_pragmas_and_schema(tmp_path):
    path = tmp_path / "new.db"
    with LedgerStore(path) as store:
        assert store.head() is None
        assert list(store.blocks()) == []
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with pytest.raises(BlockNotFoundError):
            store.block(0)
        with pytest.raises(LedgerIntegrityError, match="no blocks"):
            verify_chain(store)


def test_empty_block_is_stored(tmp_path, chain):
    with LedgerStore(tmp_path / "l.db") as store:
        store.append(chain[0])
        empty = make_block(height=1, prev_hash=chain[0].hash, proposer=0, round=1, transactions=[])
        assert store.append(empty) == empty.hash
        assert store.block(1) == empty
        assert verify_chain(store) == (1, empty.hash)


# --------------------------------------------------------------------------- append rules


def test_append_must_extend_the_head(tmp_path, chain):
    with LedgerStore(tmp_path / "l.db") as store:
        with pytest.raises(LedgerIntegrityError, match="expected 0"):
            store.append(chain[1])
        store.append(chain[0])
        store.append(chain[1])
        for bad in (chain[1], chain[3], chain[0]):  # repeat, skip, restart
            with pytest.raises(LedgerIntegrityError) as info:
                store.append(bad)
            assert info.value.height == bad.height
        fork = make_block(
            height=2,
            prev_hash=digest(b"elsewhere"),
            proposer=0,
            round=1,
            transactions=chain[2].transactions,
        )
        with pytest.raises(LedgerIntegrityError, match="prev_hash"):
            store.append(fork)
        assert store.head() == (1, chain[1].hash)
        assert verify_chain(store) == (1, chain[1].hash)


def test_append_is_atomic(tmp_path, chain, monkeypatch):
    store = LedgerStore(tmp_path / "l.db")
    store.append(chain[0])
    real = store._insert_transactions

    def crash_after_first_row(rows):
        real(rows[:1])
        raise RuntimeError("power cut")

    monkeypatch.setattr(store, "_insert_transactions", crash_after_first_row)
    with pytest.raises(RuntimeError):
        store.append(chain[1])
    monkeypatch.undo()
    assert store.head() == (0, chain[0].hash)
    assert store.orphan_transaction_heights() == []
    store.append(chain[1])
    assert verify_chain(store) == (1, chain[1].hash)
    store.close()


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE blocks SET round = 9 WHERE height = 1",
        "DELETE FROM blocks WHERE height = 6",
        "UPDATE transactions SET body = x'00' WHERE height = 1 AND idx = 0",
        "DELETE FROM transactions",
        "UPDATE meta SET value = 'other'",
        "DELETE FROM meta",
        "INSERT INTO transactions VALUES (1, 99, 'fallback', x'00')",  # not the newest block
    ],
)
def test_triggers_make_the_tables_append_only(ledger, sql):
    conn = sqlite3.connect(ledger)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(sql)
    conn.close()
    with open_readonly(ledger) as store:
        verify_chain(store)


def test_readonly_store_refuses_writes_and_never_creates(tmp_path, ledger, chain):
    with open_readonly(ledger) as store, pytest.raises(LedgerReadOnlyError):
        store.append(chain[0])
    missing = tmp_path / "missing.db"
    with pytest.raises(LedgerIntegrityError):
        open_readonly(missing)
    assert not missing.exists()


# --------------------------------------------------------------------------- not a ledger


@pytest.mark.parametrize("opener", [open_readonly, LedgerStore])
def test_non_sqlite_file_raises(tmp_path, opener):
    path = tmp_path / "notes.db"
    path.write_bytes(b"definitely not SQLite " * 100)
    with pytest.raises(LedgerIntegrityError):
        opener(path)
    assert path.read_bytes() == b"definitely not SQLite " * 100


@pytest.mark.parametrize("opener", [open_readonly, LedgerStore])
def test_foreign_sqlite_database_raises(tmp_path, opener):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE blocks (height INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="schema"):
        opener(path)


def test_empty_file_is_not_a_ledger_when_read_only(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(LedgerIntegrityError):
        open_readonly(path)


def test_wrong_format_version_raises(ledger):
    _tamper(ledger, "UPDATE meta SET value = 'qfl-ledger/0'")
    with pytest.raises(LedgerIntegrityError, match="format"):
        open_readonly(ledger)


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("DROP TRIGGER transactions_newest_block", "trigger transactions_newest_block"),
        ("DROP TRIGGER blocks_no_update", "trigger blocks_no_update"),
        ("INSERT INTO meta VALUES ('comment', 'x')", "meta rows ['comment']"),
        ("CREATE TABLE extra (x)", "table extra"),
        ("CREATE INDEX tx_kind ON transactions(kind)", "index tx_kind"),
        (
            "CREATE TRIGGER quiet AFTER INSERT ON blocks BEGIN SELECT 1; END",
            "trigger quiet",
        ),
    ],
)
@pytest.mark.parametrize("opener", [open_readonly, LedgerStore])
def test_any_other_schema_or_meta_row_is_not_a_ledger(ledger, sql, named, opener):
    conn = sqlite3.connect(ledger)
    conn.execute(sql)
    conn.commit()
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="schema|meta rows") as info:
        opener(ledger)
    assert named in str(info.value)


def test_an_altered_trigger_is_not_a_ledger(ledger):
    """Same name, other SQL: a trigger that no longer aborts anything."""
    conn = sqlite3.connect(ledger)
    conn.execute("DROP TRIGGER blocks_no_delete")
    conn.execute("CREATE TRIGGER blocks_no_delete BEFORE DELETE ON blocks BEGIN SELECT 1; END")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerIntegrityError, match="altered .*blocks_no_delete"):
        open_readonly(ledger)


def test_the_fresh_schema_is_the_expected_one(tmp_path):
    with LedgerStore(tmp_path / "fresh.db"):
        pass
    with open_readonly(tmp_path / "fresh.db") as store:  # passes its own check
        assert store.head() is None


# --------------------------------------------------------------------------- tampering


def test_corrupted_header_byte_is_detected(ledger):
    header = _column(ledger, "SELECT header FROM blocks WHERE height = 2")
    for pos in (len(header) - 1, len(header) // 2):
        corrupt = bytearray(header)
        corrupt[pos] ^= 0x01
        _tamper(ledger, "UPDATE blocks SET header = ? WHERE height = 2", (bytes(corrupt),))
        assert _verify_fails(ledger).height == 2
    with open_readonly(ledger) as store, pytest.raises(LedgerIntegrityError):
        list(store.blocks())


def test_swapped_transactions_are_detected(ledger):
    rows = {}
    conn = sqlite3.connect(ledger)
    for idx in (1, 3):
        rows[idx] = conn.execute(
            "SELECT kind, body FROM transactions WHERE height = 3 AND idx = ?", (idx,)
        ).fetchone()
    conn.close()
    for idx, other in ((1, 3), (3, 1)):
        _tamper(
            ledger,
            "UPDATE transactions SET kind = ?, body = ? WHERE height = 3 AND idx = ?",
            (*rows[other], idx),
        )
    err = _verify_fails(ledger)
    assert err.height == 3 and "merkle_root" in str(err)


def test_transaction_from_another_block_is_detected(ledger):
    body = _column(ledger, "SELECT body FROM transactions WHERE height = 1 AND idx = 1")
    _tamper(ledger, "UPDATE transactions SET body = ? WHERE height = 5 AND idx = 1", (body,))
    assert _verify_fails(ledger).height == 5


@pytest.mark.parametrize(
    ("column", "message"),
    [
        ("merkle_root", "merkle_root column"),
        ("hash", "hash column"),
        ("prev_hash", "prev_hash column"),
    ],
)
def test_changed_hash_column_is_detected(ledger, column, message):
    _tamper(ledger, f"UPDATE blocks SET {column} = ? WHERE height = 4", (digest(b"forged"),))
    err = _verify_fails(ledger)
    assert err.height == 4 and message in str(err)


@pytest.mark.parametrize("column", ["proposer", "round"])
def test_changed_copy_column_is_detected(ledger, column):
    _tamper(ledger, f"UPDATE blocks SET {column} = 7 WHERE height = 3")
    assert _verify_fails(ledger).height == 3


def test_malformed_transaction_names_its_index(ledger):
    _tamper(
        ledger,
        "UPDATE transactions SET body = ? WHERE height = 1 AND idx = 2",
        (b"\x00not canonical",),
    )
    err = _verify_fails(ledger)
    assert (err.height, err.index) == (1, 2)
    with open_readonly(ledger) as store, pytest.raises(LedgerIntegrityError) as info:
        store.block(1)
    assert (info.value.height, info.value.index) == (1, 2)


def test_non_canonical_transaction_body_is_detected(ledger, chain):
    """The same fields, encoded with the dict entries out of canonical order."""
    fields = chain[1].transactions[1].model_dump()
    entries = sorted(fields.items(), reverse=True)
    body = b"d" + len(entries).to_bytes(4, "big")
    body += b"".join(encode_value(k) + encode_value(v) for k, v in entries)
    assert body != encode_tx(chain[1].transactions[1])
    _tamper(ledger, "UPDATE transactions SET body = ? WHERE height = 1 AND idx = 1", (body,))
    err = _verify_fails(ledger)
    assert (err.height, err.index) == (1, 1) and "canonical" in str(err)


def test_changed_kind_column_names_its_index(ledger):
    _tamper(ledger, "UPDATE transactions SET kind = 'update' WHERE height = 1 AND idx = 4")
    err = _verify_fails(ledger)
    assert (err.height, err.index) == (1, 4)


def test_removed_transaction_is_detected(ledger):
    _tamper(ledger, "DELETE FROM transactions WHERE height = 3 AND idx = 2")
    err = _verify_fails(ledger)
    assert (err.height, err.index) == (3, 2)
    _tamper(ledger, "DELETE FROM transactions WHERE height = 3 AND idx = 4")
    _tamper(ledger, "DELETE FROM transactions WHERE height = 3 AND idx = 3")
    assert _verify_fails(ledger).height == 3


def test_removed_block_is_detected(ledger):
    _tamper(ledger, "DELETE FROM transactions WHERE height = 2")
    _tamper(ledger, "DELETE FROM blocks WHERE height = 2")
    err = _verify_fails(ledger)
    assert err.height == 2 and "missing" in str(err)


def test_orphan_transactions_are_detected(ledger):
    _tamper(ledger, "INSERT INTO transactions VALUES (99, 0, 'fallback', x'4e')")
    assert _verify_fails(ledger).height == 99


def test_consistently_rewritten_block_breaks_the_next_link(ledger, chain):
    """A forged block 3 with matching hash columns is caught by block 4's prev_hash."""
    forged = make_block(
        height=3,
        prev_hash=chain[2].hash,
        proposer=chain[3].header.proposer,
        round=chain[3].header.round,
        transactions=chain[3].transactions[:2],
    )
    _tamper(ledger, "DELETE FROM transactions WHERE height = 3 AND idx >= 2")
    _tamper(
        ledger,
        "UPDATE blocks SET hash = ?, merkle_root = ?, header = ? WHERE height = 3",
        (forged.hash, forged.header.merkle_root, encode_header(forged.header)),
    )
    err = _verify_fails(ledger)
    assert err.height == 4 and "prev_hash" in str(err)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE blocks SET header = 'text' WHERE height = 2",
        "UPDATE blocks SET round = 'one' WHERE height = 2",
        "UPDATE transactions SET body = 'text' WHERE height = 2 AND idx = 0",
    ],
)
def test_values_of_the_wrong_type_are_detected(ledger, sql):
    _tamper(ledger, sql)
    assert _verify_fails(ledger).height == 2


def test_corrupted_certificate_is_detected(ledger):
    _tamper(ledger, "UPDATE blocks SET certificate = x'00' WHERE height = 5")
    assert _verify_fails(ledger).height == 5


# --------------------------------------------------------------------------- check_block


def test_check_block_runs_on_every_block_in_order(ledger, chain):
    seen = []
    with open_readonly(ledger) as store:
        assert verify_chain(store, check_block=seen.append) == (chain[-1].height, chain[-1].hash)
    assert seen == chain


def test_check_block_failures_name_the_block(ledger):
    class QuorumMissing(QflError):
        pass

    def reject_4(block: Block) -> None:
        if block.height == 4:
            raise QuorumMissing("2 of 3 signatures needed")

    def integrity_3(block: Block) -> None:
        if block.height == 3:
            raise LedgerIntegrityError("bad signature")

    def bug(block: Block) -> None:
        raise ZeroDivisionError

    with open_readonly(ledger) as store:
        with pytest.raises(LedgerIntegrityError, match="QuorumMissing") as info:
            verify_chain(store, check_block=reject_4)
        assert info.value.height == 4
        with pytest.raises(LedgerIntegrityError) as info:
            verify_chain(store, check_block=integrity_3)
        assert info.value.height == 3
        with pytest.raises(ZeroDivisionError):
            verify_chain(store, check_block=bug)


# --------------------------------------------------------------------------- crash safety

WRITER = """
import os, sys, time
from ledger.encoding import digest
from ledger.records import ZERO_HASH, Fallback, UnsignedUpdate, make_block
from ledger.store import LedgerStore

path, stop_at = sys.argv[1], int(sys.argv[2])  # stop_at: hang inside this block's write
store = LedgerStore(path)
# A small page cache spills uncommitted pages into the WAL before COMMIT, so a kill
# mid-block leaves frames of a half-written block in the WAL for recovery to discard.
store._conn.execute("PRAGMA cache_size=-64")
insert = store._insert_transactions

def insert_then_hang(rows):
    size = os.path.getsize(path + "-wal")
    insert(rows)
    print(size, os.path.getsize(path + "-wal"), flush=True)
    time.sleep(60)

prev, height = ZERO_HASH, 0
while True:
    txs = [
        UnsignedUpdate(client_id=i, round=height, nonce=bytes(16), delta_digest=digest(b"%d" % i),
                       num_examples=i, path="quantum", metrics={"loss": i}).signed(bytes(3309))
        for i in range(48)
    ]
    txs.append(Fallback(client_id=0, round=height, resource="aer", reason="r"))
    block = make_block(height=height, prev_hash=prev, proposer=0, round=height, transactions=txs)
    if height == stop_at:
        store._insert_transactions = insert_then_hang
    prev = store.append(block)
    height += 1
"""


def _start_writer(path: Path, stop_at: int = -1) -> subprocess.Popen:
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(stop_at)],
        env={**os.environ, "PYTHONPATH": pythonpath},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(writer: subprocess.Popen) -> None:
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    writer.stderr.close()
    assert writer.returncode == -signal.SIGKILL


def _extend_after_crash(path: Path, height: int, head: bytes) -> None:
    with LedgerStore(path) as store:
        assert store.head() == (height, head)
        nxt = make_block(
            height=height + 1,
            prev_hash=head,
            proposer=0,
            round=height + 1,
            transactions=[Fallback(client_id=0, round=0, resource="r", reason="")],
        )
        store.append(nxt)
        assert verify_chain(store) == (height + 1, nxt.hash)


def _observed_height(path: Path) -> int:
    try:
        with open_readonly(path) as store:
            head = store.head()
    except LedgerIntegrityError:  # not created yet
        return -1
    return -1 if head is None else head[0]


@pytest.mark.parametrize("delay", [0.0, 0.007, 0.019, 0.031])
def test_writer_killed_mid_block_leaves_a_verifiable_chain(tmp_path, delay):
    path = tmp_path / "crash.db"
    writer = _start_writer(path)
    try:
        observed, deadline = -1, time.monotonic() + 20
        while observed < 4:
            assert writer.poll() is None, writer.stderr.read()
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.01)
            observed = _observed_height(path)
        time.sleep(delay)
        observed = max(observed, _observed_height(path))
    finally:
        _kill(writer)
    with open_readonly(path) as store:
        height, head = verify_chain(store)
    assert height >= observed
    _extend_after_crash(path, height, head)


def test_writer_killed_inside_a_block_write_loses_only_that_block(tmp_path):
    """Deterministic: the writer hangs after its INSERTs for block 3, before COMMIT."""
    path = tmp_path / "crash.db"
    writer = _start_writer(path, stop_at=3)
    try:
        line = writer.stdout.readline()
        assert line, writer.stderr.read()
        wal_before, wal_after = map(int, line.split())
    finally:
        _kill(writer)
    assert wal_after > wal_before  # the half block reached the WAL file
    with open_readonly(path) as store:
        height, head = verify_chain(store)
        assert store.orphan_transaction_heights() == []
    assert height == 2
    _extend_after_crash(path, height, head)


@pytest.mark.parametrize(
    ("height_sql", "reported"),
    [("-1", -1), ("2.5", 2.5), ("'3'", 3), ("'x'", "x"), ("x'01'", b"\x01")],
    ids=["negative", "between", "text-number", "text", "blob"],
)
def test_transaction_rows_without_their_block_are_found(ledger, chain, height_sql, reported):
    """Rows at a height no block has (below, between, above, or not a number) fail, after
    every block checked; a numeric text is stored as the number (column affinity)."""
    body = _column(ledger, "SELECT body FROM transactions WHERE height = 1 AND idx = 0")
    if reported == 3:  # an existing block's height: the row is a second transaction 0
        _tamper(
            ledger, f"INSERT INTO transactions VALUES ({height_sql}, 99, 'genesis', ?)", (body,)
        )
        assert _verify_fails(ledger).height == 3
        return
    _tamper(ledger, f"INSERT INTO transactions VALUES ({height_sql}, 0, 'genesis', ?)", (body,))
    error = _verify_fails(ledger)
    assert "without a block" in str(error) and error.height == reported
