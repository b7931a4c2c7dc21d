"""BFT block certification: n >= 3f + 1 validators, a commit-reveal beacon, rotating leaders.

Pure classes (no I/O, no clock; randomness only from the source a validator is given):
actors wrap `Validator` (actors/validator.py), and the driver runs `Consensus.run_height`,
over in-process validators or, given a `resolve` hook, over remote ones (see `Consensus`).

One height, in order:

1. **Commit.** Every validator draws a 32-byte value and a 32-byte nonce from its
   randomness source (e.g. `quantum.qrng.QRNG.random_bytes`) and publishes
   ``Commitment(commitment = SHA3-256(value || nonce))``, signed under ``CTX_BEACON``.
2. **Reveal.** Once the commitments are collected, each validator publishes
   ``Reveal(value, nonce)``, signed under ``CTX_BEACON``, and, in the same message, its
   commitment for the next height (`Validator.reveal_and_commit`): the driver then skips
   step 1 at the next height for every validator it already holds a commitment of. A
   commitment hides its value until its own height's reveals, whenever it was made.
3. **Beacon.** Everyone computes `compute_beacon` (a validator when it is next asked to
   propose or endorse, from the commitments and reveals the driver hands it): a validator
   is *included* when it has exactly one validly signed commitment for the height and a
   validly signed reveal that opens it; every other validator is *excluded* (and listed in
   the `Beacon`). The value is
   ``domain_digest("beacon/v1", u64(height) || value_i1 || value_i2 || ...)`` over the
   included validators in index order. At least `quorum_size(n)` validators must be
   included (so at least f + 1 honest values, and no single validator fixes the beacon;
   the last revealer can still choose to withhold, the usual commit-reveal caveat: its
   withholding is recorded as an exclusion).
4. **Leader.** With ``ids`` the sorted validator indices and
   ``base = int.from_bytes(beacon.value[:8], "big") % n``, attempt ``r`` is led by
   ``ids[(base + r) % n]``. Attempt 0 first; if its leader is down or its block gets no
   quorum, attempt 1, ... up to n attempts.
5. **Propose / validate / vote.** The leader proposes ``make_block(...)``. Each validator
   checks it (`Validator.validate_proposal`: height, previous hash, canonical header and
   transactions, Merkle root, expected proposer, every transaction check such as
   `ledger.contract.update_signature_check`) and only then signs the block hash under
   ``CTX_BLOCK`` (`Validator.vote`; `Validator.endorse` does both in one call). An honest
   validator votes for at most one block per height, so two quorums at one height need at
   least f + 1 equivocating validators.
6. **Certificate.** `quorum_size(n)` distinct valid votes (``2f + 1`` when ``n = 3f + 1``)
   form the block's quorum certificate; `check_certificate` re-checks one and
   `detect_equivocation` turns two certificates at one height into evidence.

Quorum: with f = floor((n - 1) / 3) tolerated faults, a quorum is ``floor((n + f) / 2) + 1``
validators, which is 2f + 1 for n = 3f + 1, and in general the smallest size at which any
two quorums share an honest validator. n = 1 (f = 0) certifies with its one signature.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Annotated, Any, Final, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict

from ledger.crypto import CTX_BEACON, CTX_BLOCK, SignatureError, Signer, Verifier
from ledger.encoding import (
    HASH_BYTES,
    LedgerIntegrityError,
    digest,
    domain_digest,
    encode_value,
)
from ledger.records import (
    Block,
    BlockHeader,
    Certificate,
    Transaction,
    block_hash,
    decode_header,
    decode_tx,
    encode_header,
    encode_tx,
    make_block,
    transactions_root,
)
from qfl.errors import QflError

__all__ = [
    "REVEAL_BYTES",
    "AttemptFailure",
    "Beacon",
    "BeaconError",
    "PendingHeight",
    "CertificateError",
    "Commitment",
    "Consensus",
    "ConsensusError",
    "Decision",
    "Equivocation",
    "InvalidProposal",
    "QuorumCertificate",
    "Resolve",
    "Reveal",
    "Share",
    "Validator",
    "Vote",
    "beacon_seed",
    "check_certificate",
    "check_equivocation",
    "check_vote",
    "commitment_message",
    "compute_beacon",
    "detect_equivocation",
    "leader_for",
    "max_faults",
    "quorum_size",
    "reveal_message",
]

REVEAL_BYTES: Final = 32
PRECHECKED_MAX: Final = 8192  # transactions a validator remembers having checked ahead
DOMAIN_BEACON_COMMIT: Final = "beacon-commit/v1"
DOMAIN_BEACON_REVEAL: Final = "beacon-reveal/v1"
DOMAIN_BEACON: Final = "beacon/v1"
DOMAIN_BEACON_SEED: Final = "beacon-seed/v1"

_log = logging.getLogger(__name__)

Index = Annotated[int, Strict(), Field(ge=0)]
Hash32 = Annotated[bytes, Strict(), Field(min_length=HASH_BYTES, max_length=HASH_BYTES)]
Secret = Annotated[bytes, Strict(), Field(min_length=REVEAL_BYTES, max_length=REVEAL_BYTES)]
Blob = Annotated[bytes, Strict()]
RandomSource = Callable[[int], bytes]
TransactionCheck = Callable[[Sequence[Transaction]], None]
Tamper = Callable[[Block], Block]
# Remote validators: `resolve(pending)` turns the pending calls of one phase (e.g. Ray
# object refs) into their values, or the exception each raised (a crash, a timeout, or the
# validator's own error unwrapped), in order; `share(value)` publishes a value once for
# many calls (e.g. `ray.put`).
Resolve = Callable[[list[Any]], list[Any]]
Share = Callable[[Any], Any]
_T = TypeVar("_T")


# --------------------------------------------------------------------------- errors


class ConsensusError(QflError):
    """Consensus cannot proceed or a consensus message is invalid."""


class BeaconError(ConsensusError):
    """Too few validators revealed a value matching their commitment."""


class InvalidProposal(ConsensusError):
    """A proposed block fails a validator's checks; it gets no vote."""


class CertificateError(ConsensusError):
    """A quorum certificate has fewer than a quorum of distinct valid signatures."""


# --------------------------------------------------------------------------- messages


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Commitment(_Message):
    """A validator's commitment SHA3-256(value || nonce) to its beacon value for `height`."""

    index: Index
    height: Index
    commitment: Hash32
    signature: Blob


class Reveal(_Message):
    """The opening of a validator's commitment for `height`."""

    index: Index
    height: Index
    value: Secret
    nonce: Secret
    signature: Blob


class Beacon(_Message):
    """A height's shared randomness and which validators contributed to it."""

    height: Index
    value: Hash32
    included: tuple[Index, ...]
    excluded: tuple[Index, ...]


class Vote(_Message):
    """A validator's signature on a block hash (CTX_BLOCK): one certificate entry."""

    index: Index
    height: Index
    block_hash: Hash32
    signature: Blob


class QuorumCertificate(_Message):
    """A block hash at a height and the (validator, signature) pairs certifying it."""

    height: Index
    block_hash: Hash32
    signatures: Certificate

    @classmethod
    def of_block(cls, block: Block) -> QuorumCertificate:
        """The certificate a (certified) block carries."""
        return cls(height=block.height, block_hash=block.hash, signatures=block.certificate)


class Equivocation(_Message):
    """Evidence: `validator` signed two different block hashes at `height`."""

    validator: Index
    height: Index
    first_hash: Hash32
    first_signature: Blob
    second_hash: Hash32
    second_signature: Blob


class AttemptFailure(_Message):
    """Why an attempt at a height certified nothing."""

    attempt: Index
    leader: Index
    reason: str


class Decision(_Message):
    """A certified block and how the height went."""

    block: Block
    beacon: Beacon
    leader: Index
    attempt: Index
    failures: tuple[AttemptFailure, ...] = ()
    faulty: tuple[Index, ...] = ()  # validators that crashed or misbehaved during the height


# --------------------------------------------------------------------------- quorum


def max_faults(n: int) -> int:
    """f = floor((n - 1) / 3): the faults n validators tolerate."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConsensusError(f"need at least one validator, got {n!r}")
    return (n - 1) // 3


def quorum_size(n: int, f: int | None = None) -> int:
    """floor((n + f) / 2) + 1 validators (2f + 1 when n = 3f + 1); f defaults to max_faults(n)."""
    f = max_faults(n) if f is None else f
    if isinstance(f, bool) or not isinstance(f, int) or f < 0 or n < 3 * f + 1:
        raise ConsensusError(f"{n} validators cannot tolerate f = {f} faults (need n >= 3f + 1)")
    return (n + f) // 2 + 1


def _sorted_keys(validator_keys: Mapping[int, bytes]) -> dict[int, bytes]:
    keys = {int(i): bytes(k) for i, k in sorted(validator_keys.items())}
    if not keys:
        raise ConsensusError("the validator set is empty")
    return keys


# --------------------------------------------------------------------------- beacon


def commitment_message(index: int, height: int, commitment: bytes) -> bytes:
    """What a `Commitment`'s signature covers."""
    body = encode_value({"index": index, "height": height, "commitment": commitment})
    return domain_digest(DOMAIN_BEACON_COMMIT, body)


def reveal_message(index: int, height: int, value: bytes, nonce: bytes) -> bytes:
    """What a `Reveal`'s signature covers."""
    body = encode_value({"index": index, "height": height, "value": value, "nonce": nonce})
    return domain_digest(DOMAIN_BEACON_REVEAL, body)


def _verifies(verifier: Verifier, key: bytes, message: bytes, signature: bytes, ctx: bytes) -> bool:
    try:
        verifier.verify(key, message, signature, ctx)
    except SignatureError:
        return False
    return True


def _valid_commitments(
    height: int,
    commitments: Iterable[Commitment],
    keys: Mapping[int, bytes],
    verifier: Verifier,
) -> dict[int, bytes]:
    """index -> commitment for validators with exactly one validly signed commitment."""
    found: dict[int, set[bytes]] = {}
    for c in commitments:
        if c.height != height or c.index not in keys:
            continue
        message = commitment_message(c.index, c.height, c.commitment)
        if _verifies(verifier, keys[c.index], message, c.signature, CTX_BEACON):
            found.setdefault(c.index, set()).add(c.commitment)
    return {i: next(iter(cs)) for i, cs in found.items() if len(cs) == 1}


def compute_beacon(
    height: int,
    commitments: Iterable[Commitment],
    reveals: Iterable[Reveal],
    validator_keys: Mapping[int, bytes],
    verifier: Verifier,
) -> Beacon:
    """The beacon of `height` from the published commitments and reveals (module docstring).

    Raises `BeaconError` when fewer than `quorum_size(n)` validators are included.
    """
    keys = _sorted_keys(validator_keys)
    committed = _valid_commitments(height, commitments, keys, verifier)
    revealed: dict[int, bytes] = {}
    for r in reveals:
        expected = committed.get(r.index)
        if r.height != height or expected is None or digest(r.value + r.nonce) != expected:
            continue
        message = reveal_message(r.index, r.height, r.value, r.nonce)
        if _verifies(verifier, keys[r.index], message, r.signature, CTX_BEACON):
            revealed[r.index] = r.value
    included = tuple(sorted(revealed))
    excluded = tuple(i for i in keys if i not in revealed)
    needed = quorum_size(len(keys))
    if len(included) < needed:
        raise BeaconError(
            f"height {height}: {len(included)} valid reveals, a beacon needs {needed} "
            f"(excluded: {list(excluded)})"
        )
    data = height.to_bytes(8, "big") + b"".join(revealed[i] for i in included)
    value = domain_digest(DOMAIN_BEACON, data)
    return Beacon(height=height, value=value, included=included, excluded=excluded)


def leader_for(beacon: Beacon, validator_ids: Iterable[int], attempt: int = 0) -> int:
    """The leader of `attempt` at the beacon's height: ids[(base + attempt) % n]."""
    ids = sorted(validator_ids)
    if not ids:
        raise ConsensusError("the validator set is empty")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise ConsensusError(f"attempt must be an int >= 0, got {attempt!r}")
    base = int.from_bytes(beacon.value[:8], "big") % len(ids)
    return ids[(base + attempt) % len(ids)]


def beacon_seed(beacon: Beacon) -> int:
    """A 63-bit seed from the beacon (e.g. for client sampling), independent of the leader."""
    return int.from_bytes(domain_digest(DOMAIN_BEACON_SEED, beacon.value)[:8], "big") >> 1


# --------------------------------------------------------------------------- votes, certificates


def check_vote(
    vote: Vote, block_hash: bytes, validator_keys: Mapping[int, bytes], verifier: Verifier
) -> None:
    """Raise `ConsensusError` unless `vote` is a valid signature on `block_hash`."""
    key = validator_keys.get(vote.index)
    if key is None:
        raise ConsensusError(f"vote from unknown validator {vote.index}")
    if vote.block_hash != block_hash:
        raise ConsensusError(f"validator {vote.index} voted for another block")
    try:
        verifier.verify(key, block_hash, vote.signature, CTX_BLOCK)
    except SignatureError as exc:
        raise ConsensusError(f"vote of validator {vote.index} does not verify: {exc}") from exc


def check_certificate(
    block_hash: bytes,
    certificate: Certificate | QuorumCertificate,
    validator_keys: Mapping[int, bytes],
    f: int | None = None,
    *,
    verifier: Verifier,
    strict: bool = False,
) -> int:
    """Raise `CertificateError` unless a quorum of distinct validators signed `block_hash`.

    Counts the distinct known validators whose signature verifies under ``CTX_BLOCK``;
    fewer than ``quorum_size(n, f)`` raises. With ``strict`` (ledger verification) ANY
    entry that is not a valid signature of a known validator raises, even if a quorum
    remains. Returns the number of valid signatures.
    """
    if isinstance(certificate, QuorumCertificate):
        if certificate.block_hash != block_hash:
            raise CertificateError("the certificate is for another block hash")
        certificate = certificate.signatures
    keys = _sorted_keys(validator_keys)
    needed = quorum_size(len(keys), f)
    valid: set[int] = set()
    for index, signature in certificate:
        key = keys.get(index)
        if key is not None and _verifies(verifier, key, block_hash, signature, CTX_BLOCK):
            valid.add(index)
        elif strict:
            what = "unknown validator" if key is None else "invalid signature of validator"
            raise CertificateError(f"certificate entry: {what} {index}")
    if len(valid) < needed:
        raise CertificateError(
            f"{len(valid)} distinct valid signatures, a quorum of {len(keys)} validators "
            f"is {needed}"
        )
    return len(valid)


def detect_equivocation(
    certificates: Iterable[QuorumCertificate | Block],
    validator_keys: Mapping[int, bytes],
    verifier: Verifier,
) -> list[Equivocation]:
    """Evidence of every validator that validly signed two block hashes at one height.

    Only verified signatures count, so a forged certificate entry cannot frame a validator.
    One piece of evidence per (validator, height), ordered by (height, validator).
    """
    signed: dict[tuple[int, int], dict[bytes, bytes]] = {}
    for cert in certificates:
        qc = QuorumCertificate.of_block(cert) if isinstance(cert, Block) else cert
        for index, signature in qc.signatures:
            hashes = signed.setdefault((qc.height, index), {})
            key = validator_keys.get(index)
            if qc.block_hash in hashes or key is None:
                continue
            if _verifies(verifier, key, qc.block_hash, signature, CTX_BLOCK):
                hashes[qc.block_hash] = signature
    evidence = []
    for (height, index), hashes in sorted(signed.items()):
        if len(hashes) >= 2:
            (h1, s1), (h2, s2) = sorted(hashes.items())[:2]
            evidence.append(
                Equivocation(
                    validator=index,
                    height=height,
                    first_hash=h1,
                    first_signature=s1,
                    second_hash=h2,
                    second_signature=s2,
                )
            )
    return evidence


def check_equivocation(
    evidence: Equivocation, validator_keys: Mapping[int, bytes], verifier: Verifier
) -> None:
    """Raise `ConsensusError` unless `evidence` proves its validator equivocated."""
    key = validator_keys.get(evidence.validator)
    if key is None:
        raise ConsensusError(f"evidence names unknown validator {evidence.validator}")
    if evidence.first_hash == evidence.second_hash:
        raise ConsensusError("evidence names the same block hash twice")
    for block, signature in (
        (evidence.first_hash, evidence.first_signature),
        (evidence.second_hash, evidence.second_signature),
    ):
        if not _verifies(verifier, key, block, signature, CTX_BLOCK):
            raise ConsensusError("an evidence signature does not verify")


# --------------------------------------------------------------------------- validator


def _canonical_header(block: Block) -> BlockHeader:
    try:
        return decode_header(encode_header(block.header))
    except (LedgerIntegrityError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidProposal(f"malformed block header: {exc}") from exc


def forget_transactions(
    prechecked: dict[bytes, Transaction], transactions: Iterable[Transaction]
) -> None:
    """Drop `transactions` (now in a block) from a table of `Validator.precheck`-ed ones."""
    for tx in transactions:
        prechecked.pop(encode_tx(tx), None)


class Validator:
    """One validator: beacon commit/reveal, proposal checks and votes, for any height.

    `qrng_source(n)` returns n random bytes (a `quantum.qrng.QRNG`'s `random_bytes`, or a
    seeded generator's ``bytes`` in tests). `check_transactions` is its own transaction
    check (e.g. `ledger.contract.update_signature_check`), used when a call passes none.
    `tamper` is a test-only Byzantine injection: it replaces every block this validator
    proposes by ``tamper(honest_block)``; no configuration sets it. `prechecked` may be
    one table shared by validators in one process (all with the same check): what one
    `precheck`s, the others reuse, since decoding and the check are functions of the
    bytes alone; its owner then forgets a block's transactions (`forget_transactions`),
    which `endorse` does for a validator's own table. State per height: its
    beacon secret and commitment, the beacon it computed, the block hashes it validated
    and the one it voted for; `forget_below` drops old heights. Across heights: the
    transactions it `precheck`-ed, until a block holding them gets its vote.
    """

    def __init__(
        self,
        index: int,
        signer: Signer,
        validator_keys: Mapping[int, bytes],
        qrng_source: RandomSource,
        *,
        verifier: Verifier | None = None,
        check_transactions: TransactionCheck | None = None,
        tamper: Tamper | None = None,
        prechecked: dict[bytes, Transaction] | None = None,
    ):
        self.keys = _sorted_keys(validator_keys)
        if self.keys.get(index) != signer.public_key:
            raise ConsensusError(f"validator {index}: the signer's key is not its registered key")
        self.index = index
        self.ids = tuple(self.keys)
        self._signer = signer
        self._source = qrng_source
        self.verifier = verifier if verifier is not None else Verifier(signer.backend_name)
        self._check = check_transactions
        self._tamper = tamper
        self._secrets: dict[int, tuple[bytes, bytes]] = {}
        self._commitments: dict[int, Commitment] = {}
        self._beacons: dict[int, Beacon] = {}
        self._beacon_inputs: dict[int, tuple[tuple[Commitment, ...], tuple[Reveal, ...]]] = {}
        self._validated: dict[int, set[bytes]] = {}
        self._voted: dict[int, bytes] = {}
        # canonical bytes -> decoded, passed its check
        self._prechecked: dict[bytes, Transaction] = {} if prechecked is None else prechecked
        self._shared = prechecked is not None

    # ----------------------------------------------------------------- beacon

    def _draw(self) -> bytes:
        value = self._source(REVEAL_BYTES)
        if not isinstance(value, bytes) or len(value) != REVEAL_BYTES:
            raise ConsensusError(f"the randomness source must return {REVEAL_BYTES} bytes")
        return value

    def commit(self, height: int) -> Commitment:
        """This validator's commitment for `height` (drawn once; later calls return it)."""
        if height not in self._commitments:
            value, nonce = self._draw(), self._draw()
            commitment = digest(value + nonce)
            message = commitment_message(self.index, height, commitment)
            self._secrets[height] = (value, nonce)
            self._commitments[height] = Commitment(
                index=self.index,
                height=height,
                commitment=commitment,
                signature=self._signer.sign(message, CTX_BEACON),
            )
        return self._commitments[height]

    def reveal(self, height: int) -> Reveal:
        """The opening of this validator's commitment for `height`."""
        if height not in self._secrets:
            raise ConsensusError(f"validator {self.index} has no commitment for height {height}")
        value, nonce = self._secrets[height]
        message = reveal_message(self.index, height, value, nonce)
        return Reveal(
            index=self.index,
            height=height,
            value=value,
            nonce=nonce,
            signature=self._signer.sign(message, CTX_BEACON),
        )

    def reveal_and_commit(self, height: int) -> tuple[Reveal, Commitment]:
        """`reveal(height)` and `commit(height + 1)` in one call (the driver collects the
        next height's commitments with this height's reveals, saving a round trip)."""
        return self.reveal(height), self.commit(height + 1)

    def beacon(
        self, height: int, commitments: Iterable[Commitment], reveals: Iterable[Reveal]
    ) -> Beacon:
        """Compute (once) and remember the beacon of `height`; a different one later raises.

        The same commitments and reveals again return the remembered beacon unchecked.
        """
        inputs = (tuple(commitments), tuple(reveals))
        known = self._beacons.get(height)
        if known is not None and self._beacon_inputs.get(height) == inputs:
            return known
        beacon = compute_beacon(height, inputs[0], inputs[1], self.keys, self.verifier)
        known = self._beacons.setdefault(height, beacon)
        if known != beacon:
            raise ConsensusError(f"validator {self.index}: conflicting beacons at height {height}")
        self._beacon_inputs[height] = inputs
        return beacon

    def leader(self, height: int, attempt: int = 0) -> int:
        """The leader of `attempt` at `height`, from this validator's own beacon."""
        if height not in self._beacons:
            raise ConsensusError(f"validator {self.index} has no beacon for height {height}")
        return leader_for(self._beacons[height], self.ids, attempt)

    def _learn_beacon(
        self,
        height: int,
        commitments: Iterable[Commitment] | None,
        reveals: Iterable[Reveal] | None,
    ) -> None:
        if commitments is not None or reveals is not None:
            self.beacon(height, commitments or (), reveals or ())

    # ----------------------------------------------------------------- blocks

    def propose(
        self,
        *,
        height: int,
        prev_hash: bytes,
        round: int,
        transactions: Sequence[Transaction],
        attempt: int = 0,
        commitments: Iterable[Commitment] | None = None,
        reveals: Iterable[Reveal] | None = None,
    ) -> Block:
        """A block over `transactions`, if this validator leads `attempt` at `height`.

        With `commitments` and `reveals`, the height's beacon is computed from them first.
        """
        self._learn_beacon(height, commitments, reveals)
        leader = self.leader(height, attempt)
        if leader != self.index:
            raise ConsensusError(
                f"validator {self.index} does not lead attempt {attempt} at height {height}"
            )
        block = make_block(
            height=height,
            prev_hash=prev_hash,
            proposer=self.index,
            round=round,
            transactions=transactions,
        )
        return block if self._tamper is None else self._tamper(block)

    def validate_proposal(
        self,
        block: Block,
        *,
        height: int,
        prev_hash: bytes,
        attempt: int = 0,
        check_transactions: TransactionCheck | None = None,
        expected: Sequence[Transaction] | None = None,
    ) -> None:
        """Return None if `block` may be voted for; else raise `InvalidProposal` (why).

        Checks: a `Block`, canonical header and transactions, the height and previous
        hash, the Merkle root recomputed from the transactions, the proposer is the leader
        of `attempt` by this validator's beacon, the transactions are exactly `expected`
        (the ones submitted for the height, when given: a leader may not drop, add or
        change any), and `check_transactions` (this validator's own check when None; e.g.
        every Update's signature); a `QflError` it raises rejects the block.
        """
        if not isinstance(block, Block):
            raise InvalidProposal(f"not a block: {type(block).__name__}")
        header = _canonical_header(block)
        if header.height != height:
            raise InvalidProposal(f"block height {header.height}, expected {height}")
        if header.prev_hash != prev_hash:
            raise InvalidProposal(f"prev_hash {header.prev_hash.hex()[:16]}... is not the head")
        transactions, unchecked = self._decode_transactions(block)
        if transactions_root(transactions) != header.merkle_root:
            raise InvalidProposal("merkle_root does not match the transactions")
        leader = self.leader(height, attempt)
        if header.proposer != leader:
            raise InvalidProposal(f"proposer {header.proposer}, attempt {attempt} leader {leader}")
        if expected is not None and not _same_transactions(transactions, expected):
            raise InvalidProposal("the block does not hold the transactions submitted for it")
        if check_transactions is not None:  # another check: prechecks do not count
            check, unchecked = check_transactions, transactions
        else:
            check = self._check
        if check is not None and unchecked:
            try:
                check(unchecked)
            except QflError as exc:
                raise InvalidProposal(f"a transaction fails its check: {exc}") from exc
        self._validated.setdefault(height, set()).add(block_hash(header))

    def _decode_transactions(
        self, block: Block
    ) -> tuple[tuple[Transaction, ...], tuple[Transaction, ...]]:
        """The block's transactions decoded from their canonical bytes, and those of them
        this validator's own check has not passed yet (`precheck`)."""
        out, unchecked = [], []
        prechecked = self._prechecked
        for i, tx in enumerate(block.transactions):
            try:
                data = encode_tx(tx)
                decoded = prechecked.get(data)
                if decoded is None:
                    decoded = decode_tx(data)
                    unchecked.append(decoded)
            except (LedgerIntegrityError, TypeError, ValueError) as exc:
                raise InvalidProposal(f"transaction {i} is malformed: {exc}") from exc
            out.append(decoded)
        return tuple(out), tuple(unchecked)

    def precheck(self, transactions: Sequence[Transaction]) -> int:
        """Decode and check `transactions` ahead of the block that will hold them.

        E.g. a round's updates as the keeper admits them: a proposal holding the same
        canonical bytes later reuses the decoded record and skips this validator's own
        check for it (decoding is a function of the bytes, so this is exact; the check must
        judge each transaction alone, as `ledger.contract.update_signature_check` does).
        A transaction that is malformed or fails is not remembered: the proposal's
        validation refuses it with the reason. Returns how many passed.
        """
        if self._check is None:
            return 0
        passed = 0
        for tx in transactions:
            try:
                data = encode_tx(tx)
                decoded = decode_tx(data)
                self._check((decoded,))
            except (QflError, TypeError, ValueError):
                continue
            self._prechecked[data] = decoded
            passed += 1
        while len(self._prechecked) > PRECHECKED_MAX:  # oldest first
            del self._prechecked[next(iter(self._prechecked))]
        return passed

    def vote(self, block: Block) -> Vote:
        """Sign the hash of `block`, which this validator validated; one block per height.

        Raises `ConsensusError` for a block it did not validate, or when it already voted
        for another block at that height (an honest validator never equivocates).
        """
        header = _canonical_header(block)
        digest_ = block_hash(header)
        if digest_ not in self._validated.get(header.height, set()):
            raise ConsensusError(f"validator {self.index} did not validate this block")
        voted = self._voted.setdefault(header.height, digest_)
        if voted != digest_:
            raise ConsensusError(
                f"validator {self.index} already voted for another block at {header.height}"
            )
        return Vote(
            index=self.index,
            height=header.height,
            block_hash=digest_,
            signature=self._signer.sign(digest_, CTX_BLOCK),
        )

    def endorse(
        self,
        block: Block | BlockHeader,
        *,
        transactions: Sequence[Transaction] | None = None,
        height: int,
        prev_hash: bytes,
        attempt: int = 0,
        check_transactions: TransactionCheck | None = None,
        expected: Sequence[Transaction] | None = None,
        commitments: Iterable[Commitment] | None = None,
        reveals: Iterable[Reveal] | None = None,
    ) -> Vote:
        """`validate_proposal`, then `vote`: one call per validator and attempt.

        The proposal is a `Block`, or its header with `transactions` (sent apart, e.g.
        published once for every validator: then they are the submitted ones). With
        `commitments` and `reveals`, the height's beacon is computed from them first.
        Raises `InvalidProposal` (or another `ConsensusError`) when it does not vote.
        """
        if isinstance(block, BlockHeader):
            if transactions is None:
                raise InvalidProposal("a block header without its transactions")
            block = Block.model_construct(
                header=block, transactions=tuple(transactions), certificate=()
            )
        self._learn_beacon(height, commitments, reveals)
        self.validate_proposal(
            block,
            height=height,
            prev_hash=prev_hash,
            attempt=attempt,
            check_transactions=check_transactions,
            expected=expected,
        )
        vote = self.vote(block)
        if not self._shared:  # in a block now: no later block may hold them again
            forget_transactions(self._prechecked, block.transactions)
        return vote

    def forget_below(self, height: int) -> None:
        """Drop the per-height state of heights < `height` (after they are committed)."""
        tables = (
            self._secrets,
            self._commitments,
            self._beacons,
            self._beacon_inputs,
            self._validated,
            self._voted,
        )
        for table in tables:
            for h in [h for h in table if h < height]:
                del table[h]


# --------------------------------------------------------------------------- driver


class Consensus:
    """The driver-side coordinator: runs one height over the validators.

    `validators[i]` is the validator with the i-th smallest index, or None when it is
    down. Two ways to reach them:

    - in process (``resolve=None``): `Validator` objects, called one after the other;
      votes are collected until a quorum is reached.
    - remote (`resolve` given): handles with the `Validator` methods ``commit``,
      ``reveal_and_commit``, ``propose`` and ``endorse`` (and an ``index``) whose calls
      return pending results. Each phase is issued to every live validator first and then
      resolved together (so they validate a block in parallel), and every valid vote
      that arrives goes into the certificate. The height's transactions are published
      once with `share` and passed as that handle: a leader may answer ``propose`` with
      the block's `BlockHeader` alone when its block holds exactly the transactions it
      was given, and ``endorse`` then gets the header and the shared transactions (a
      block over other transactions is shared whole).

    A validator whose call fails with anything other than a `ConsensusError` (crashed,
    timed out, or any other error) counts as crashed for the rest of the height; a
    `ConsensusError` from ``endorse`` (e.g. `InvalidProposal`) is a refusal to vote.
    Byzantine leaders are simulated with `tamper`: ``{index: f}`` replaces validator
    index's proposals by ``f(honest_block)`` (in process; remote validators take theirs
    at construction, see `Validator`). Both ways, the next height's commitments come with
    this height's reveals (`Validator.reveal_and_commit`), and a certified block is made
    of the driver's own transaction objects (every voter checked it holds exactly them).
    """

    def __init__(
        self,
        validator_keys: Mapping[int, bytes],
        *,
        f: int | None = None,
        verifier: Verifier | None = None,
        backend: str = "auto",
        resolve: Resolve | None = None,
        share: Share | None = None,
    ):
        self.keys = _sorted_keys(validator_keys)
        self.ids = tuple(self.keys)
        self.n = len(self.ids)
        self.f = max_faults(self.n) if f is None else f
        self.quorum = quorum_size(self.n, self.f)
        self.verifier = verifier if verifier is not None else Verifier(backend)
        self._resolve = resolve
        self._share = share if share is not None and resolve is not None else _identity
        self._ahead: dict[int, dict[int, Commitment]] = {}  # height -> next commitments

    def _live(self, validators: Sequence[object | None]) -> dict[int, Any]:
        if len(validators) != self.n:
            raise ConsensusError(f"{len(validators)} validator slots for {self.n} validators")
        live = {}
        for expected, v in zip(self.ids, validators, strict=True):
            if v is None:
                continue
            if v.index != expected:
                raise ConsensusError(f"slot of validator {expected} holds validator {v.index}")
            live[expected] = v
        return live

    def run_height(
        self,
        height: int,
        prev_hash: bytes,
        transactions: Sequence[Transaction] | Callable[[Beacon], Sequence[Transaction]],
        validators: Sequence[Validator | Any | None],
        *,
        round: int = 0,
        check_transactions: TransactionCheck | None = None,
        tamper: Mapping[int, Tamper] | None = None,
    ) -> Decision:
        """Certify a block over `transactions` at `height` (on top of `prev_hash`).

        `transactions` may be a function of this height's beacon (e.g. a `RoundOpen` whose
        clients are sampled with `beacon_seed(beacon)`); it is called once, after the
        beacon and before any proposal. `check_transactions` is passed to in-process
        validators (None: each uses its own). Returns the `Decision` with the certified
        block; raises `ConsensusError` when no attempt reaches a quorum (more than f
        validators down or misbehaving).

        The same as `finish_height(begin_height(...))`.
        """
        pending = self.begin_height(
            height,
            prev_hash,
            transactions,
            validators,
            round=round,
            check_transactions=check_transactions,
            tamper=tamper,
        )
        return self.finish_height(pending)

    def begin_height(
        self,
        height: int,
        prev_hash: bytes,
        transactions: Sequence[Transaction] | Callable[[Beacon], Sequence[Transaction]],
        validators: Sequence[Validator | Any | None],
        *,
        round: int = 0,
        check_transactions: TransactionCheck | None = None,
        tamper: Mapping[int, Tamper] | None = None,
    ) -> PendingHeight:
        """The first phase of `run_height`: the beacon (commit and reveal) and the height's
        transactions, fixed before any proposal.

        What the returned `PendingHeight` holds is final: every attempt of
        `finish_height` proposes exactly these transactions, so a value derived from them
        (a `RoundOpen`'s sampled clients) is either certified or the height fails.
        """
        live = self._live(validators)
        faulty: set[int] = set()
        ahead = self._ahead.pop(height, {})  # committed with the previous height's reveals
        self._ahead.clear()
        commitments = [c for i, c in ahead.items() if i in live]
        late = {i: v for i, v in live.items() if i not in ahead}
        commitments += self._gather(late, faulty, lambda v: v.commit(height))
        opened = self._gather(live, faulty, lambda v: v.reveal_and_commit(height))
        reveals = [reveal for reveal, _ in opened]
        self._ahead[height + 1] = {c.index: c for _, c in opened}
        beacon = compute_beacon(height, commitments, reveals, self.keys, self.verifier)
        if callable(transactions):
            transactions = tuple(transactions(beacon))
        transactions = tuple(transactions)
        if self._resolve is not None:
            for tx in transactions:  # encoded once here; the encodings travel with them
                encode_tx(tx)
        h = _Height(
            height=height,
            prev_hash=prev_hash,
            round=round,
            transactions=transactions,
            shared=self._share(transactions),
            commitments=tuple(commitments),
            reveals=tuple(reveals),
            check=check_transactions,
        )
        return PendingHeight(h, beacon, live, faulty, dict(tamper or {}))

    def finish_height(self, pending: PendingHeight) -> Decision:
        """The second phase of `run_height`: proposals, votes and the quorum certificate."""
        h, beacon, live, faulty = pending.h, pending.beacon, pending.live, pending.faulty
        tamper, transactions = pending.tamper, h.transactions
        failures: list[AttemptFailure] = []
        for attempt in range(self.n):
            leader = leader_for(beacon, self.ids, attempt)
            try:
                block = self._propose(live, faulty, leader, tamper, attempt, h)
                certificate = self._collect_votes(live, faulty, block, attempt, h)
            except ConsensusError as exc:
                _log.info("height %d attempt %d (leader %d): %s", h.height, attempt, leader, exc)
                failures.append(AttemptFailure(attempt=attempt, leader=leader, reason=str(exc)))
                continue
            # every voter checked that the block holds exactly the submitted transactions:
            # the certified block is made of them (the driver's own objects)
            certified = Block.model_construct(
                header=block.header, transactions=transactions, certificate=certificate
            )
            if transactions_root(transactions) != certified.header.merkle_root:
                raise ConsensusError(f"height {h.height}: a quorum certified other transactions")
            check_certificate(
                certified.hash, certificate, self.keys, self.f, verifier=self.verifier, strict=True
            )
            return Decision(
                block=certified,
                beacon=beacon,
                leader=leader,
                attempt=attempt,
                failures=tuple(failures),
                faulty=tuple(sorted(faulty)),
            )
        raise ConsensusError(
            f"height {h.height}: no block certified in {self.n} attempts: "
            + "; ".join(f"{f.leader}: {f.reason}" for f in failures)
        )

    def _call(
        self, live: Mapping[int, Any], faulty: set[int], call: Callable[[Any], _T]
    ) -> list[tuple[int, _T | Exception]]:
        """`call` on every live, non-faulty validator: (index, value or exception) each.

        In process, one after the other; remote, all issued, then resolved together.
        """
        indices = [i for i in live if i not in faulty]
        if self._resolve is None:
            out: list[tuple[int, _T | Exception]] = []
            for index in indices:
                try:
                    out.append((index, call(live[index])))
                except Exception as exc:  # a crashed validator must not stop the others
                    out.append((index, exc))
            return out
        issued: list[int] = []
        pending: list[Any] = []
        failed: list[tuple[int, Exception]] = []
        for index in indices:
            try:
                pending.append(call(live[index]))
            except Exception as exc:  # could not even submit the call
                failed.append((index, exc))
                continue
            issued.append(index)
        results = self._resolve(pending) if pending else []
        if len(results) != len(pending):
            raise ConsensusError(f"resolve returned {len(results)} results for {len(pending)}")
        return [*zip(issued, results, strict=True), *failed]

    def _gather(
        self, live: Mapping[int, Any], faulty: set[int], call: Callable[[Any], _T]
    ) -> list[_T]:
        """The values of `call` on every live validator; a validator that fails is faulty."""
        out: list[_T] = []
        for index, result in sorted(self._call(live, faulty, call), key=_first):
            if isinstance(result, BaseException):
                _log.warning("validator %d failed: %s", index, result)
                faulty.add(index)
            else:
                out.append(result)
        return out

    def _propose(
        self,
        live: Mapping[int, Any],
        faulty: set[int],
        leader: int,
        tamper: Mapping[int, Tamper] | None,
        attempt: int,
        h: _Height,
    ) -> Block:
        if leader not in live or leader in faulty:
            raise ConsensusError("the leader is down")
        ((_, block),) = self._call(
            {leader: live[leader]},
            set(),
            lambda v: v.propose(
                height=h.height,
                prev_hash=h.prev_hash,
                round=h.round,
                transactions=h.shared,
                attempt=attempt,
                commitments=h.commitments,
                reveals=h.reveals,
            ),
        )
        if isinstance(block, BaseException):
            faulty.add(leader)
            raise ConsensusError(f"the leader failed to propose: {block}") from block
        if isinstance(block, BlockHeader):  # a remote leader's block over h.transactions
            block = Block.model_construct(header=block, transactions=h.transactions, certificate=())
        if tamper and leader in tamper:
            block = tamper[leader](block)
        return block

    def _collect_votes(
        self,
        live: Mapping[int, Any],
        faulty: set[int],
        block: Block,
        attempt: int,
        h: _Height,
    ) -> Certificate:
        votes: dict[int, bytes] = {}
        refusals: list[str] = []
        try:
            digest_ = block_hash(_canonical_header(block))
        except InvalidProposal as exc:
            raise ConsensusError(f"no quorum: {exc}") from exc
        if self._resolve is None:
            proposal, transactions, expected = block, None, h.transactions
        elif block.transactions is h.transactions:  # the header, and the shared transactions
            proposal, transactions, expected = block.header, h.shared, None
        else:  # a block over other transactions: published once
            proposal, transactions, expected = self._share(block), None, h.shared

        def endorse(v: Any) -> Vote:
            return v.endorse(
                proposal,
                transactions=transactions,
                height=h.height,
                prev_hash=h.prev_hash,
                attempt=attempt,
                check_transactions=h.check,
                expected=expected,
                commitments=h.commitments,
                reveals=h.reveals,
            )

        def count(index: int, result: Vote | Exception) -> None:
            if isinstance(result, ConsensusError):
                refusals.append(f"{index}: {result}")
                return
            if isinstance(result, BaseException):
                _log.warning("validator %d failed: %s", index, result)
                faulty.add(index)
                return
            try:
                check_vote(result, digest_, self.keys, self.verifier)
                if result.index != index:
                    raise ConsensusError(f"validator {index} sent the vote of {result.index}")
            except ConsensusError as exc:
                refusals.append(f"{index}: {exc}")
                return
            votes[index] = result.signature

        if self._resolve is None:  # one by one, until a quorum
            for index, v in live.items():
                if index in faulty:
                    continue
                try:
                    result: Vote | Exception = endorse(v)
                except Exception as exc:
                    result = exc
                count(index, result)
                if len(votes) >= self.quorum:
                    return tuple(sorted(votes.items()))
        else:  # all at once: every valid vote that arrives is in the certificate
            for index, result in sorted(self._call(live, faulty, endorse), key=_first):
                count(index, result)
            if len(votes) >= self.quorum:
                return tuple(sorted(votes.items()))
        raise ConsensusError(
            f"no quorum ({len(votes)} of {self.quorum} votes): " + "; ".join(refusals[:3])
        )


class _Height(NamedTuple):
    """What the calls of one height need."""

    height: int
    prev_hash: bytes
    round: int
    transactions: tuple[Transaction, ...]
    shared: Any  # `share(transactions)`: what remote calls get instead of them
    commitments: tuple[Commitment, ...]
    reveals: tuple[Reveal, ...]
    check: TransactionCheck | None


class PendingHeight(NamedTuple):
    """A height between `Consensus.begin_height` and `Consensus.finish_height`."""

    h: _Height
    beacon: Beacon
    live: dict[int, Any]
    faulty: set[int]
    tamper: dict[int, Tamper]

    @property
    def transactions(self) -> tuple[Transaction, ...]:
        return self.h.transactions


def _same_transactions(a: Sequence[Transaction], b: Sequence[Transaction]) -> bool:
    """Whether `a` and `b` are the same transactions (canonical bytes), in order."""
    try:
        return len(a) == len(b) and all(
            encode_tx(x) == encode_tx(y) for x, y in zip(a, b, strict=True)
        )
    except (TypeError, ValueError) as exc:
        raise InvalidProposal(f"the submitted transactions do not encode: {exc}") from exc


def _identity(value: _T) -> _T:
    return value


def _first(pair: tuple[int, object]) -> int:
    return pair[0]
