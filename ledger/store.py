"""The append-only block store: SQLite in WAL mode with ``synchronous=FULL``.

Schema (format ``qfl-ledger/1``, recorded in ``meta``)::

    blocks(height INTEGER PRIMARY KEY, hash BLOB, prev_hash BLOB, merkle_root BLOB,
           proposer INTEGER, round INTEGER, header BLOB, certificate BLOB)
    transactions(height INTEGER, idx INTEGER, kind TEXT, body BLOB, PRIMARY KEY(height, idx))

``header`` is the canonical header encoding (`ledger.records.encode_header`), ``body`` a
transaction's canonical bytes (`encode_tx`), ``certificate`` the canonical quorum
certificate; the other columns are copies kept for queries and are checked against them.

A block and its transactions are written in one SQLite transaction (``BEGIN IMMEDIATE``),
so a crash leaves either the whole block or none of it. Triggers abort any UPDATE or
DELETE, and any transaction row not for the newest block; there is no API to change a
block. Tampering by someone who drops the triggers is caught by `verify_chain`, which
re-derives every hash from the stored bytes.

The schema is fixed, so opening a store checks the file's whole schema (every table,
index and trigger in ``sqlite_master``, with its SQL) against the one this module
creates, and ``meta`` against its one row: a dropped or altered append-only trigger, an
added table, index, trigger or view, and an extra ``meta`` row each make the file "not a
ledger" (`LedgerIntegrityError`). None of them changes a recorded hash, but the file is
then not one this code wrote: a dropped trigger is the trace of a rewrite, and an extra
table or row is content outside the hash chain that a reader could mistake for part of it.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from hashlib import sha3_256 as _sha3_256
from pathlib import Path
from typing import Final, NamedTuple

from pydantic import ValidationError

from ledger.encoding import DOMAIN_BLOCK_HEADER, LedgerIntegrityError, domain_digest
from ledger.merkle import LEAF_TAG, root_of_hashes
from ledger.records import (
    ZERO_HASH,
    Block,
    BlockHeader,
    Transaction,
    _decode_tx,
    block_hash,
    decode_certificate,
    decode_header,
    encode_certificate,
    encode_header,
    encode_tx,
)
from qfl.errors import QflError

__all__ = [
    "FORMAT",
    "BlockNotFoundError",
    "LedgerIntegrityError",
    "LedgerReadOnlyError",
    "LedgerStore",
    "StoredBlock",
    "head_height",
    "open_readonly",
    "verify_chain",
]

FORMAT: Final = "qfl-ledger/1"
_READ_MMAP_BYTES: Final = 1 << 30  # read-only connections map up to this much of the file
_BLOCK_COLUMNS: Final = "height, hash, prev_hash, merkle_root, proposer, round, header, certificate"
_TABLES: Final = {
    "meta": ("key", "value"),
    "blocks": (
        "height",
        "hash",
        "prev_hash",
        "merkle_root",
        "proposer",
        "round",
        "header",
        "certificate",
    ),
    "transactions": ("height", "idx", "kind", "body"),
}
_SCHEMA: Final = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE blocks (
        height INTEGER PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,
        prev_hash BLOB NOT NULL,
        merkle_root BLOB NOT NULL,
        proposer INTEGER NOT NULL,
        round INTEGER NOT NULL,
        header BLOB NOT NULL,
        certificate BLOB NOT NULL
    )""",
    """CREATE TABLE transactions (
        height INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        kind TEXT NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (height, idx)
    ) WITHOUT ROWID""",
    *(
        f"""CREATE TRIGGER {table}_no_{op} BEFORE {op.upper()} ON {table}
        BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END"""
        for table in _TABLES
        for op in ("update", "delete")
    ),
    """CREATE TRIGGER transactions_newest_block BEFORE INSERT ON transactions
        WHEN NEW.height IS NOT (SELECT MAX(height) FROM blocks)
        BEGIN SELECT RAISE(ABORT, 'transactions are written with their block'); END""",
)


@functools.cache
def _expected_schema() -> frozenset[tuple[str, str, str, str | None]]:
    """(type, name, tbl_name, sql) of every object in a fresh store's ``sqlite_master``."""
    conn = sqlite3.connect(":memory:")
    try:
        for statement in _SCHEMA:
            conn.execute(statement)
        return frozenset(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
    finally:
        conn.close()


class LedgerReadOnlyError(QflError, PermissionError):
    """A write was attempted on a store opened with `open_readonly`."""


class BlockNotFoundError(QflError, LookupError):
    """No block is stored at the requested height."""


class StoredBlock(NamedTuple):
    """One block exactly as stored: every column, and its transactions' (idx, kind, body)."""

    height: int
    hash: bytes
    prev_hash: bytes
    merkle_root: bytes
    proposer: int
    round: int
    header: bytes
    certificate: bytes
    transactions: list[tuple[int, str, bytes]]


class LedgerStore:
    """An append-only chain of blocks in the SQLite file at `path` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._conn = _connect(self.path, readonly)
        try:
            self._prepare()
        except BaseException:
            self._conn.close()
            raise

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    def __enter__(self) -> LedgerStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _prepare(self) -> None:
        with _integrity(f"{self.path} is not a ledger database"):
            fresh = not self._tables()  # reading first: a foreign file is never modified
            if self.readonly or not fresh:
                self._check_schema()
            if not self.readonly:
                self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            if fresh and not self.readonly:
                self._create_schema()

    def _tables(self) -> set[str]:
        rows = self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {name for (name,) in rows}

    def _create_schema(self) -> None:
        with self._write():
            if self._tables():  # another process created it first
                return
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))

    def _check_schema(self) -> None:
        for table, columns in _TABLES.items():
            found = tuple(row[1] for row in self._conn.execute(f"PRAGMA table_info({table})"))
            if found != columns:
                raise LedgerIntegrityError(f"{self.path} lacks the ledger schema ({table})")
        rows = self._conn.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
        if ("format", FORMAT) not in rows:
            raise LedgerIntegrityError(f"{self.path} is not in format {FORMAT}")
        if len(rows) != 1:
            extra = sorted(str(key) for key, _ in rows if key != "format")
            raise LedgerIntegrityError(f"{self.path}: unexpected meta rows {extra}")
        objects = set(self._conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"))
        expected = _expected_schema()
        if objects != expected:
            missing = sorted(f"{kind} {name}" for kind, name, _, _ in expected - objects)
            unexpected = sorted(f"{kind} {name}" for kind, name, _, _ in objects - expected)
            raise LedgerIntegrityError(
                f"{self.path} does not have the ledger schema {FORMAT}: "
                f"missing or altered {missing}, unexpected or altered {unexpected}"
            )

    @contextmanager
    def _write(self) -> Iterator[None]:
        if self.readonly:
            raise LedgerReadOnlyError(f"{self.path} was opened read-only")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Read under one consistent view of the file (a read transaction)."""
        self._conn.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            self._conn.execute("ROLLBACK")

    # ----------------------------------------------------------------- writing

    def append(self, block: Block) -> bytes:
        """Append `block` as the new head, atomically; return its hash.

        Raises `LedgerIntegrityError` unless its height is head + 1 (0 for an empty chain)
        and its prev_hash is the head's hash (32 zero bytes for the genesis block).
        """
        header = block.header
        digest = block_hash(header)
        row = (
            header.height,
            digest,
            header.prev_hash,
            header.merkle_root,
            header.proposer,
            header.round,
            encode_header(header),
            encode_certificate(block.certificate),
        )
        bodies = [
            (header.height, i, tx.kind, encode_tx(tx)) for i, tx in enumerate(block.transactions)
        ]
        refused = _integrity(
            "append refused", height=header.height, errors=(sqlite3.IntegrityError,)
        )
        with self._write(), refused:
            self._check_extends_head(header)
            self._insert_block(row)
            self._insert_transactions(bodies)
        return digest

    def _check_extends_head(self, header: BlockHeader) -> None:
        head = self.head()
        height, prev = (0, ZERO_HASH) if head is None else (head[0] + 1, head[1])
        if header.height != height:
            raise LedgerIntegrityError(
                f"block height {header.height} does not extend the head (expected {height})",
                height=header.height,
            )
        if header.prev_hash != prev:
            raise LedgerIntegrityError(
                f"prev_hash {header.prev_hash.hex()} is not the head hash {prev.hex()}",
                height=header.height,
            )

    def _insert_block(self, row: tuple[object, ...]) -> None:
        self._conn.execute("INSERT INTO blocks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def _insert_transactions(self, rows: list[tuple[int, int, str, bytes]]) -> None:
        self._conn.executemany("INSERT INTO transactions VALUES (?, ?, ?, ?)", rows)

    # ----------------------------------------------------------------- reading

    def head(self) -> tuple[int, bytes] | None:
        """(height, hash) of the newest block, or None for an empty chain."""
        row = self._conn.execute(
            "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def stored(self, height: int) -> StoredBlock:
        """The raw columns of block `height` (unchecked; see `verify_chain`)."""
        row = self._conn.execute(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE height = ?", (height,)
        ).fetchone()
        if row is None:
            raise BlockNotFoundError(f"no block at height {height}")
        txs = self._conn.execute(
            "SELECT idx, kind, body FROM transactions WHERE height = ? ORDER BY idx", (height,)
        ).fetchall()
        return StoredBlock(*row, transactions=txs)

    def heights(self) -> list[int]:
        """Every stored height, ascending (0..head for an intact chain)."""
        return [h for (h,) in self._conn.execute("SELECT height FROM blocks ORDER BY height")]

    def orphan_transaction_heights(self) -> list[int]:
        """Heights that have transaction rows but no block row (none in an intact chain)."""
        rows = self._conn.execute(
            "SELECT DISTINCT height FROM transactions"
            " WHERE height NOT IN (SELECT height FROM blocks) ORDER BY height"
        )
        return [h for (h,) in rows]

    def block(self, height: int) -> Block:
        """The block at `height`, decoded and checked against its own row.

        Raises `LedgerIntegrityError` if its bytes are malformed or its header, Merkle root
        and hash columns disagree; the link to the previous block is `blocks()`'s check.
        """
        return _verify_stored(self.stored(height), None)

    def blocks(self) -> Iterator[Block]:
        """Every block from genesis to the head (as of the call), in order, hash-linked.

        Each block is checked as by `verify_chain` (without `check_block`), lazily.
        """
        head = self.head()
        prev = ZERO_HASH
        for height in range(0 if head is None else head[0] + 1):
            try:
                block = _verify_stored(self.stored(height), prev)
            except BlockNotFoundError as exc:
                raise LedgerIntegrityError("block missing", height=height) from exc
            prev = block.hash
            yield block


def open_readonly(path: str | os.PathLike[str]) -> LedgerStore:
    """Open an existing ledger read-only (for verification); never creates a file."""
    return LedgerStore(path, readonly=True)


def head_height(path: str | os.PathLike[str]) -> int | None:
    """The height of the ledger's newest block (None: no block yet), read-only."""
    store = open_readonly(path)
    try:
        head = store.head()
    finally:
        store.close()
    return None if head is None else head[0]


# --------------------------------------------------------------------------- verification


def verify_chain(
    store: LedgerStore, check_block: Callable[[Block], None] | None = None
) -> tuple[int, bytes]:
    """Re-derive and check every block from its stored bytes; return (head height, hash).

    For each block in order: the header and every transaction decode canonically, the
    Merkle root recomputed from the transaction bodies equals the header's, the header
    links to the previous block's recomputed hash, and the stored columns (hash, prev_hash,
    merkle_root, proposer, round, kind) agree with the recomputed values. Then
    `check_block(block)` runs, for checks beyond the hash chain (signatures, quorum); a
    `QflError` it raises is re-raised as `LedgerIntegrityError` naming the block.

    Raises `LedgerIntegrityError` naming the first bad block (and transaction) height, and
    for an empty ledger or transaction rows that belong to no block.
    """
    check = None if check_block is None else (lambda block, _hash, _encoded: check_block(block))
    return _verify_chain_encoded(store, check)


EncodedTx = tuple[bytes, Sequence[int]]  # a transaction's canonical bytes, its entry offsets


def _verify_chain_encoded(
    store: LedgerStore, check_block: Callable[[Block, bytes, list[EncodedTx]], None] | None
) -> tuple[int, bytes]:
    """`verify_chain`, whose check also gets the block's hash and its transactions' bytes.

    `check_block(block, block.hash, encoded)`: the hash is the checked one (no need to
    hash the header again), and ``encoded[i]`` is transaction i's canonical bytes with the
    offsets of their entries (`ledger.encoding.decode_with_entries`), for checks that hash
    parts of them.
    """
    with _integrity("cannot read the ledger"), store.snapshot():
        # Two ordered scans, walked side by side, rather than two queries per block: every
        # block row by height, and every transaction row by (height, idx).
        blocks = store._conn.execute(f"SELECT {_BLOCK_COLUMNS} FROM blocks ORDER BY height")
        rows = store._conn.execute(
            "SELECT height, idx, kind, body FROM transactions ORDER BY height, idx"
        )
        tx = next(rows, None)
        orphan: object = None  # the lowest height of transaction rows without a block
        head: int | None = None
        prev = ZERO_HASH
        for expected, columns in enumerate(blocks):
            height = columns[0]
            if height != expected:
                raise LedgerIntegrityError("block missing", height=expected)
            while tx is not None and _sorts_before(tx[0], height):  # no block at its height
                orphan = tx[0] if orphan is None else orphan
                tx = next(rows, None)
            own = []
            while tx is not None and isinstance(tx[0], int | float) and tx[0] == height:
                own.append(tx[1:])
                tx = next(rows, None)
            stored = StoredBlock(*columns, transactions=own)
            block, encoded = _verify_stored_encoded(stored, prev)
            prev = stored.hash  # checked equal to block_hash(block.header)
            head = height
            _run_check(check_block, block, stored.hash, encoded)
        if head is None:
            raise LedgerIntegrityError(f"{store.path} holds no blocks")
        if orphan is None and tx is not None:  # rows beyond the head (or not numbers)
            orphan = tx[0]
        if orphan is not None:
            raise LedgerIntegrityError("transactions without a block", height=orphan)
        return head, prev


def _sorts_before(value: object, height: int) -> bool:
    """Whether SQLite orders column value `value` before integer `height` (NULL first, then
    numbers by value, then text and blobs)."""
    if value is None:
        return True
    if isinstance(value, int | float):
        return value < height
    return False


def _verify_stored(stored: StoredBlock, prev: bytes | None) -> Block:
    """Decode and check one stored block; `prev` is the previous block's hash (None: unchecked)."""
    return _verify_stored_encoded(stored, prev)[0]


def _verify_stored_encoded(
    stored: StoredBlock, prev: bytes | None
) -> tuple[Block, list[EncodedTx]]:
    """`_verify_stored`, and each transaction's bytes with their entry offsets."""
    height = stored.height
    _check_column_types(stored)
    header = _decode_header_at(stored)
    transactions, encoded, leaves = _decode_transactions_at(stored)
    root = root_of_hashes(leaves)  # merkle_root of the bodies
    checks = (
        (header.height == height, "header height differs from its row"),
        (root == header.merkle_root, "transactions do not match the header merkle_root"),
        (stored.merkle_root == header.merkle_root, "merkle_root column differs from header"),
        (prev in (None, header.prev_hash), "prev_hash does not link to the previous block"),
        (stored.prev_hash == header.prev_hash, "prev_hash column differs from header"),
        # block_hash(header): the stored header bytes are its canonical encoding (decoded so)
        (stored.hash == _header_hash(stored.header), "hash column differs from the header's hash"),
        (stored.proposer == header.proposer, "proposer column differs from header"),
        (stored.round == header.round, "round column differs from header"),
    )
    for ok, message in checks:
        if not ok:
            raise LedgerIntegrityError(message, height=height)
    with _integrity("malformed block", height=height):
        certificate = decode_certificate(stored.certificate)
        # Everything `Block` validates holds already: the header and the transactions are
        # validated records, the certificate is decoded and validated, and the Merkle root
        # of the transactions' canonical bytes (the bodies, as decoding checked) matches.
        block = Block.model_construct(
            header=header, transactions=tuple(transactions), certificate=certificate
        )
        return block, encoded


def _header_hash(encoded_header: bytes) -> bytes:
    return domain_digest(DOMAIN_BLOCK_HEADER, encoded_header)


def _check_column_types(stored: StoredBlock) -> None:
    blobs = (stored.hash, stored.prev_hash, stored.merkle_root, stored.header, stored.certificate)
    ints = (stored.height, stored.proposer, stored.round)
    if not all(isinstance(v, bytes) for v in blobs) or not all(type(v) is int for v in ints):
        raise LedgerIntegrityError("a column holds a value of the wrong type", height=stored.height)
    for idx, kind, body in stored.transactions:
        if type(idx) is not int or not isinstance(kind, str) or not isinstance(body, bytes):
            raise LedgerIntegrityError(
                "a transaction column holds a value of the wrong type",
                height=stored.height,
                index=idx if type(idx) is int else None,
            )


def _decode_header_at(stored: StoredBlock) -> BlockHeader:
    with _integrity("malformed header", height=stored.height):
        return decode_header(stored.header)


def _decode_transactions_at(
    stored: StoredBlock,
) -> tuple[list[Transaction], list[EncodedTx], list[bytes]]:
    """(transactions, their (bytes, entry offsets), their Merkle leaf hashes)."""
    transactions: list[Transaction] = []
    encoded: list[EncodedTx] = []
    leaves: list[bytes] = []
    for position, (idx, kind, body) in enumerate(stored.transactions):
        if idx != position:
            raise LedgerIntegrityError("transaction missing", height=stored.height, index=position)
        try:  # as `with _integrity("malformed transaction", ...)`, without its per-call cost
            tx, offsets = _decode_tx(body)
        except LedgerIntegrityError as exc:
            if exc.height is not None:
                raise
            raise LedgerIntegrityError(str(exc), height=stored.height, index=idx) from exc
        except (sqlite3.DatabaseError, ValidationError) as exc:
            raise LedgerIntegrityError(
                f"malformed transaction: {exc}", height=stored.height, index=idx
            ) from exc
        if tx.kind != kind:
            raise LedgerIntegrityError(
                f"kind column {kind!r} differs from the body's {tx.kind!r}",
                height=stored.height,
                index=idx,
            )
        transactions.append(tx)
        encoded.append((body, offsets))
        leaves.append(_sha3_256(LEAF_TAG + body).digest())  # merkle.leaf_hash(body), inlined
    return transactions, encoded, leaves


def _run_check(check_block: Callable[..., None] | None, block: Block, *args: object) -> None:
    if check_block is None:
        return
    try:
        check_block(block, *args)
    except LedgerIntegrityError as exc:
        if exc.height is not None:
            raise
        raise LedgerIntegrityError(str(exc), height=block.height) from exc
    except QflError as exc:
        raise LedgerIntegrityError(f"{type(exc).__name__}: {exc}", height=block.height) from exc


# --------------------------------------------------------------------------- sqlite


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.is_file():
            raise LedgerIntegrityError(f"no ledger database at {path}")
        target, uri = path.resolve().as_uri() + "?mode=ro", True
    else:
        target, uri = str(path), False
    try:
        conn = sqlite3.connect(target, uri=uri, isolation_level=None, timeout=30.0)
        if readonly:  # verification reads every page: map the file rather than copy it in
            conn.execute(f"PRAGMA mmap_size = {_READ_MMAP_BYTES}")
        return conn
    except sqlite3.Error as exc:
        raise LedgerIntegrityError(f"cannot open ledger database {path}: {exc}") from exc


@contextmanager
def _integrity(
    message: str,
    *,
    height: int | None = None,
    index: int | None = None,
    errors: tuple[type[Exception], ...] = (
        sqlite3.DatabaseError,
        ValidationError,
        UnicodeDecodeError,  # sqlite's message about a corrupt schema may not be UTF-8
    ),
) -> Iterator[None]:
    """Turn `errors` into `LedgerIntegrityError` (adding the location to one without)."""
    try:
        yield
    except LedgerIntegrityError as exc:
        if exc.height is not None or height is None:
            raise
        raise LedgerIntegrityError(str(exc), height=height, index=index) from exc
    except errors as exc:
        raise LedgerIntegrityError(f"{message}: {exc}", height=height, index=index) from exc
