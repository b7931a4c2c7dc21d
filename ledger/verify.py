"""Full re-verification of a ledger file from genesis: hashes, quorums, signatures, rules.

`verify_ledger` opens the file read-only, which checks its schema (`ledger.store`: the
exact tables, indexes and append-only triggers a store creates, and ``meta`` holding only
its format row; a dropped trigger, an added table or an extra ``meta`` row is not a
ledger this code wrote, so it fails), and runs `ledger.store.verify_chain` (canonical
bytes, Merkle roots, hash links, stored columns) with a `check_block` that replays, block
by block:

1. **Genesis and quorum.** Block 0 holds exactly one transaction, the `Genesis`, and no
   other block holds one. Every block (block 0 included) carries a quorum certificate
   over its hash by the validators recorded in Genesis: at least
   `ledger.consensus.quorum_size(n)` distinct signatures (2f + 1 for n = 3f + 1), and,
   strictly, no entry that is not a valid signature of a Genesis validator. The proposer
   is a Genesis validator.
2. **Updates.** Every `Update` is signed (``CTX_UPDATE`` over `update_signing_payload`
   with Genesis' ``run_id``) by the key Genesis registers for its client, and passes the
   contract's record-level rules (`ledger.contract`): registered, sampled by the open
   round's `RoundOpen`, ``update.round`` is the open round, ``(client, nonce)`` fresh in
   the whole chain, at most one update per client and round, a non-zero delta digest.
3. **Rejections.** A `Rejection` is for the open round, and its rule is consistent with
   the contract's order: ``unregistered`` names an unregistered client, ``not_sampled`` a
   registered client that was not sampled, every other rule a sampled client. A content
   rejection (``shape_mismatch``, ``non_finite``, ``norm_bound``: the update was
   authenticated) burns its nonce like an update, so no accepted `Update` anywhere in the
   chain carries its (client, nonce): a rejected update is never among the accepted. A
   ``replayed_nonce`` rejection names a (client, nonce) burned by the end of its round,
   or a client that has an accepted update in that round. (``bad_signature`` and
   ``wrong_round`` come from unauthenticated input and may carry any nonce.)
4. **Rounds.** Rounds open with `RoundOpen` (sampled clients registered, round numbers
   increasing, one round open at a time) and end with `RoundClose` for the open round,
   whose ``accepted`` equals the clients of that round's `Update` records. `Fallback`
   records name a sampled client of the open round. The head may end inside a round.

The first failure raises `LedgerIntegrityError` naming the block height and, for a
transaction, its index. With ``head`` given, the chain's head hash must equal it (a
truncated copy or a fork fails). One `Verifier` serves the whole run (parsed keys are
cached, liboqs is called without copying its arguments), the file is memory-mapped, and
each transaction is decoded once (an update without pydantic, see
`ledger.records._update_from_value`), so throughput stays close to the raw ML-DSA verify
rate (benchmarks/ledger_verify.py, L1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict

from ledger.consensus import CertificateError, check_certificate
from ledger.contract import AUTHENTICATED_RULES, NonceKey
from ledger.crypto import CTX_UPDATE, SignatureError, Verifier
from ledger.encoding import LedgerIntegrityError
from ledger.records import (
    ZERO_HASH,
    Block,
    Fallback,
    Genesis,
    Rejection,
    RoundClose,
    RoundOpen,
    Transaction,
    Update,
    _update_signing_payload_from_encoding,
)
from ledger.store import EncodedTx, _verify_chain_encoded, open_readonly

__all__ = ["VerifyReport", "verify_ledger"]


class VerifyReport(BaseModel):
    """What a successful `verify_ledger` checked."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    height: int  # of the head block
    head_hash: bytes
    blocks: int
    transactions: int
    signatures_checked: int  # update signatures + certificate signatures
    rounds_closed: int
    backend: str  # the ML-DSA backend that verified


@dataclass
class _Round:
    number: int
    sampled: frozenset[int]
    updates: dict[int, tuple[int, int]] = field(default_factory=dict)  # client -> (height, idx)
    replays: list[tuple[Rejection, int, int]] = field(default_factory=list)


class _Checker:
    """The `check_block` state machine: genesis keys, open round, burned nonces."""

    def __init__(self, verifier: Verifier):
        self.verifier = verifier
        self.genesis: Genesis | None = None
        self.run_id = ""  # Genesis' (block 0 is checked first)
        self.validators: dict[int, bytes] = {}
        self.clients: dict[int, bytes] = {}
        self.open: _Round | None = None
        self.last_round: int | None = None
        self.burned: dict[NonceKey, tuple[int, int]] = {}  # -> (height, idx) that burned it
        self.blocks = 0
        self.transactions = 0
        self.signatures = 0
        self.rounds_closed = 0
        self.encoded: list[EncodedTx] = []  # the current block's transaction bytes

    # ----------------------------------------------------------------- blocks

    def __call__(self, block: Block, block_hash: bytes, encoded: list[EncodedTx]) -> None:
        """Check `block`, whose hash is `block_hash`; `encoded[i]`: transaction i's bytes."""
        height = block.height
        if height == 0:
            self._genesis(block)
        self._certificate(block, block_hash)
        self.encoded = encoded
        for index, tx in enumerate(block.transactions):
            if type(tx) is Update:  # the bulk of a ledger: skip the dispatch
                self._update(tx, height, index)
            else:
                self._transaction(tx, height, index)
        self.blocks += 1
        self.transactions += len(block.transactions)

    def _genesis(self, block: Block) -> None:
        txs = block.transactions
        if len(txs) != 1 or not isinstance(txs[0], Genesis):
            raise LedgerIntegrityError("block 0 must hold exactly one Genesis", height=0)
        self.genesis = txs[0]
        self.run_id = self.genesis.run_id
        self.validators = dict(self.genesis.validators)
        self.clients = dict(self.genesis.clients)

    def _certificate(self, block: Block, block_hash: bytes) -> None:
        height = block.height
        if block.header.proposer not in self.validators:
            raise LedgerIntegrityError(
                f"proposer {block.header.proposer} is not a Genesis validator", height=height
            )
        try:
            self.signatures += check_certificate(
                block_hash, block.certificate, self.validators, verifier=self.verifier, strict=True
            )
        except CertificateError as exc:
            raise LedgerIntegrityError(f"quorum certificate: {exc}", height=height) from exc

    # ----------------------------------------------------------------- transactions

    def _transaction(self, tx: Transaction, height: int, index: int) -> None:
        match tx:
            case Genesis():
                if height != 0:
                    raise LedgerIntegrityError("a second Genesis", height=height, index=index)
            case RoundOpen():
                self._round_open(tx, height, index)
            case Update():
                self._update(tx, height, index)
            case Rejection():
                self._rejection(tx, height, index)
            case Fallback():
                self._fallback(tx, height, index)
            case RoundClose():
                self._round_close(tx, height, index)
            case _:  # pragma: no cover - decode_tx yields only the kinds above
                raise LedgerIntegrityError("unknown transaction", height=height, index=index)

    def _need_open(self, round_: int, what: str, height: int, index: int) -> _Round:
        if self.open is None:
            raise LedgerIntegrityError(f"{what} outside an open round", height=height, index=index)
        if round_ != self.open.number:
            raise LedgerIntegrityError(
                f"{what} for round {round_}, the open round is {self.open.number}",
                height=height,
                index=index,
            )
        return self.open

    def _round_open(self, tx: RoundOpen, height: int, index: int) -> None:
        def fail(message: str) -> LedgerIntegrityError:
            return LedgerIntegrityError(message, height=height, index=index)

        if self.open is not None:
            raise fail(f"round {tx.round} opens before round {self.open.number} closed")
        if self.last_round is not None and tx.round <= self.last_round:
            raise fail(f"round {tx.round} does not follow round {self.last_round}")
        unknown = sorted(set(tx.sampled) - set(self.clients))
        if unknown:
            raise fail(f"round {tx.round} samples unregistered clients {unknown}")
        self.open = _Round(number=tx.round, sampled=frozenset(tx.sampled))
        self.last_round = tx.round

    def _update(self, tx: Update, height: int, index: int) -> None:
        fields = tx.__dict__  # the bulk of a ledger: plain reads of the validated fields
        client = fields["client_id"]
        key = self.clients.get(client)
        if key is None:
            raise _update_error(tx, "client not registered in Genesis", height, index)
        current = self.open
        if current is None or fields["round"] != current.number:
            current = self._need_open(tx.round, "update", height, index)  # raises
        if client not in current.sampled:
            raise _update_error(tx, f"client not sampled in round {current.number}", height, index)
        nonce_key = (client, fields["nonce"])
        first = self.burned.get(nonce_key)
        if first is not None:
            message = f"nonce {tx.nonce.hex()} already used (block {first[0]}, tx {first[1]})"
            raise _update_error(tx, message, height, index)
        if client in current.updates:
            raise _update_error(tx, f"second update in round {current.number}", height, index)
        if fields["delta_digest"] == ZERO_HASH:
            raise _update_error(tx, "no delta digest", height, index)
        # update_signing_payload(tx, run_id), from the bytes tx was decoded from
        data, entries = self.encoded[index]
        payload = _update_signing_payload_from_encoding(data, entries, self.run_id)
        try:
            self.verifier.verify(key, payload, fields["signature"], CTX_UPDATE)
        except SignatureError as exc:
            raise _update_error(tx, f"bad signature: {exc}", height, index) from exc
        self.signatures += 1
        self.burned[nonce_key] = current.updates[client] = (height, index)

    def _rejection(self, tx: Rejection, height: int, index: int) -> None:
        def fail(message: str) -> LedgerIntegrityError:
            return LedgerIntegrityError(
                f"{tx.rule} rejection of client {tx.client_id}: {message}",
                height=height,
                index=index,
            )

        current = self._need_open(tx.round, "rejection", height, index)
        registered = tx.client_id in self.clients
        if tx.rule == "unregistered":
            if registered:
                raise fail("the client is registered")
            return
        if not registered:
            raise fail("the client is not registered (the rule would be 'unregistered')")
        sampled = tx.client_id in current.sampled
        if tx.rule == "not_sampled":
            if sampled:
                raise fail(f"the client is sampled in round {current.number}")
            return
        if not sampled:
            raise fail("the client is not sampled (the rule would be 'not_sampled')")
        nonce_key = (tx.client_id, tx.nonce)
        if tx.rule in AUTHENTICATED_RULES:
            if nonce_key in self.burned:
                first = self.burned[nonce_key]
                raise fail(
                    f"the rejected update's nonce is used by block {first[0]}, tx {first[1]}"
                )
            self.burned[nonce_key] = (height, index)
        elif tx.rule == "replayed_nonce":
            current.replays.append((tx, height, index))

    def _fallback(self, tx: Fallback, height: int, index: int) -> None:
        current = self._need_open(tx.round, "fallback", height, index)
        if tx.client_id not in current.sampled:
            raise LedgerIntegrityError(
                f"fallback of client {tx.client_id}, not sampled in round {current.number}",
                height=height,
                index=index,
            )

    def _round_close(self, tx: RoundClose, height: int, index: int) -> None:
        current = self._need_open(tx.round, "round close", height, index)
        updated = tuple(sorted(current.updates))
        if tx.accepted != updated:
            raise LedgerIntegrityError(
                f"round {tx.round} closes with accepted {list(tx.accepted)}, "
                f"its updates are from {list(updated)}",
                height=height,
                index=index,
            )
        self._check_replays(current)
        self.open = None
        self.rounds_closed += 1

    def _check_replays(self, current: _Round) -> None:
        for tx, height, index in current.replays:
            if (tx.client_id, tx.nonce) in self.burned or tx.client_id in current.updates:
                continue
            raise LedgerIntegrityError(
                f"replayed_nonce rejection of client {tx.client_id}: nonce {tx.nonce.hex()} "
                "was never used and the client has no update this round",
                height=height,
                index=index,
            )

    def finish(self) -> None:
        """Checks deferred to the end of a round, for a chain that ends inside one."""
        if self.open is not None:
            self._check_replays(self.open)


def _update_error(tx: Update, message: str, height: int, index: int) -> LedgerIntegrityError:
    return LedgerIntegrityError(
        f"update of client {tx.client_id}: {message}", height=height, index=index
    )


def verify_ledger(
    path: str | os.PathLike[str], *, head: bytes | None = None, backend: str = "auto"
) -> VerifyReport:
    """Re-verify the ledger at `path` from genesis (module docstring); return what was checked.

    Raises `LedgerIntegrityError` naming the first bad block (and transaction), or when
    `head` is given and the chain's head hash differs from it.
    """
    verifier = Verifier(backend)
    checker = _Checker(verifier)
    with open_readonly(path) as store:
        height, head_hash = _verify_chain_encoded(store, checker)
    checker.finish()
    if head is not None and head_hash != head:
        raise LedgerIntegrityError(
            f"head hash {head_hash.hex()} differs from the expected head {bytes(head).hex()} "
            "(truncated or forked ledger)",
            height=height,
        )
    return VerifyReport(
        height=height,
        head_hash=head_hash,
        blocks=checker.blocks,
        transactions=checker.transactions,
        signatures_checked=checker.signatures,
        rounds_closed=checker.rounds_closed,
        backend=verifier.backend_name,
    )
