"""The ledger's records: one frozen pydantic model per transaction kind, and blocks.

Every transaction carries a `kind` tag; `Transaction` is the union discriminated on it.
`encode_tx` / `decode_tx` give each transaction its one canonical byte string
(`ledger.encoding`), which is what the Merkle tree, the hashes and the store use.

Scalars are strict (an int field refuses ``"3"``, ``3.0`` and ``True``; a bytes field
refuses ``str``), containers are lenient (a list is accepted where a tuple is declared).
Bytes are serialized as hex in JSON mode (`model_dump_json` / `model_validate_json`).
Metrics are integers in micro-units (`ledger.encoding.to_micro`); no float is recorded.
Signatures and public keys are opaque bytes here: checking them is `ledger.crypto`'s job.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from hashlib import sha3_256 as _sha3_256
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ledger.encoding import (
    DOMAIN_BLOCK_HEADER,
    DOMAIN_TX,
    DOMAIN_UPDATE_SIGNING,
    HASH_BYTES,
    LedgerIntegrityError,
    _decode_top,
    decode_value,
    domain_digest,
    domain_digest_prefix,
    encode_value,
    same_encoding,
)
from ledger.merkle import leaf_hash, root_of_hashes

NONCE_BYTES: Final = 16
ZERO_HASH: Final = bytes(HASH_BYTES)

NonNegInt = Annotated[int, Strict(), Field(ge=0)]
Hash32 = Annotated[bytes, Strict(), Field(min_length=HASH_BYTES, max_length=HASH_BYTES)]
Nonce = Annotated[bytes, Strict(), Field(min_length=NONCE_BYTES, max_length=NONCE_BYTES)]
Blob = Annotated[bytes, Strict()]
KeyBytes = Annotated[bytes, Strict(), Field(min_length=1)]
Name = Annotated[str, Strict(), Field(min_length=1)]
Text = Annotated[str, Strict()]
Metrics = dict[Name, StrictInt]
Assignment = Literal["classical", "quantum"]
UpdatePath = Literal["classical", "quantum", "fallback"]
RejectionRule = Literal[
    "unregistered",
    "not_sampled",
    "wrong_round",
    "replayed_nonce",
    "bad_signature",
    "shape_mismatch",
    "non_finite",
    "norm_bound",
]
IndexedKey = tuple[NonNegInt, KeyBytes]
KEM_KEY_BYTES: Final = 1184  # an ML-KEM-768 encapsulation key (FIPS 203)
KemKey = Annotated[bytes, Strict(), Field(min_length=KEM_KEY_BYTES, max_length=KEM_KEY_BYTES)]
IndexedKemKey = tuple[NonNegInt, KemKey]


class _Record(BaseModel):
    """A frozen ledger record that remembers its canonical encoding once computed.

    Records are immutable, so `encode_tx` computes a transaction's bytes once and keeps
    them on the object, and `decode_tx` keeps the canonical bytes it was given (and the
    offsets of their entries); a block's validators, its Merkle root and the store then
    reuse them. The memo is the dict in the object's ``__pydantic_private__`` slot, made
    on first use (`_memo`), keys ``"_encoding"`` and ``"_entries"``: no pydantic private
    attributes, whose set-up would run on every validation, once per subclass level.
    It travels with a pickled record. `model_copy(update=...)` returns a record with
    other fields, so it drops the memo. Equality compares fields only, never the memo.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="hex", val_json_bytes="hex"
    )

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False):
        copy = super().model_copy(update=update, deep=deep)
        if update:
            object.__setattr__(copy, "__pydantic_private__", None)
        return copy

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))


_set_slot: Final = object.__setattr__  # sets a frozen model's slot (its memo, its fields)


def _memo(record: BaseModel) -> dict[str, Any]:
    """The record's memo dict (see `_Record`), made on first use."""
    memo = record.__pydantic_private__
    if memo is None:
        memo = {}
        _set_slot(record, "__pydantic_private__", memo)
    return memo


def forget_encoding(record: BaseModel) -> None:
    """Drop the record's memo (see `_Record`): for a record received from elsewhere (e.g.
    unpickled), whose memo nothing vouches for; its bytes are then derived from its fields.
    """
    _set_slot(record, "__pydantic_private__", None)


def _strictly_increasing(values: Sequence[int], what: str) -> None:
    if any(a >= b for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{what} must be strictly increasing (sorted, no duplicates)")


def _sorted_metrics(metrics: dict[str, int]) -> dict[str, int]:
    return dict(sorted(metrics.items()))


# --------------------------------------------------------------------------- transactions


class Genesis(_Record):
    """Block 0's transaction: the run, its config and every key allowed to sign.

    kem_keys: each client's ML-KEM-768 encapsulation key for secure aggregation (the
    pairwise key agreement of `federated.secagg`), registered next to its ML-DSA-65 key:
    the same client ids as `clients`, in the same order; empty when the run has no secure
    aggregation. Always part of the canonical encoding (an empty tuple encodes too).
    """

    kind: Literal["genesis"] = "genesis"
    run_id: Name
    config_hash: Hash32
    crypto_backend: Name
    validators: tuple[IndexedKey, ...] = Field(min_length=1)  # (validator index, public key)
    clients: tuple[IndexedKey, ...]  # (client id, public key)
    kem_keys: tuple[IndexedKemKey, ...] = ()  # (client id, encapsulation key); () or all
    created_round: Literal[0] = 0

    @field_validator("validators", "clients", "kem_keys")
    @classmethod
    def _sorted_ids(cls, keys: tuple[IndexedKey, ...]) -> tuple[IndexedKey, ...]:
        _strictly_increasing([index for index, _ in keys], "key indices")
        return keys

    @model_validator(mode="after")
    def _kem_keys_align(self) -> Genesis:
        if self.kem_keys and [k for k, _ in self.kem_keys] != [k for k, _ in self.clients]:
            raise ValueError("kem_keys must register exactly the clients (or be empty)")
        return self


class RoundOpen(_Record):
    """A round starts: its randomness beacon, the sampled clients and their assignment."""

    kind: Literal["round_open"] = "round_open"
    round: NonNegInt
    beacon: KeyBytes
    sampled: tuple[NonNegInt, ...]
    plan: dict[NonNegInt, Assignment]  # client id -> where it trains; keys == sampled

    @field_validator("sampled")
    @classmethod
    def _sorted_sampled(cls, sampled: tuple[int, ...]) -> tuple[int, ...]:
        _strictly_increasing(sampled, "sampled clients")
        return sampled

    @field_validator("plan")
    @classmethod
    def _sorted_plan(cls, plan: dict[int, Assignment]) -> dict[int, Assignment]:
        return dict(sorted(plan.items()))

    @model_validator(mode="after")
    def _plan_covers_sampled(self) -> RoundOpen:
        if tuple(self.plan) != self.sampled:
            raise ValueError("the plan must assign exactly the sampled clients")
        return self


class _UpdateFields(_Record):
    client_id: NonNegInt
    round: NonNegInt
    nonce: Nonce
    delta_digest: Hash32  # ledger.encoding.weights_digest of the update
    num_examples: NonNegInt
    path: UpdatePath
    metrics: Metrics  # micro-units

    @field_validator("metrics")
    @classmethod
    def _sorted(cls, metrics: dict[str, int]) -> dict[str, int]:
        return _sorted_metrics(metrics)


class UnsignedUpdate(_UpdateFields):
    """An update as the client builds it before signing (see `update_signing_payload`)."""

    def signed(self, signature: bytes) -> Update:
        """This update with `signature` attached."""
        return Update(**self.model_dump(), signature=signature)


class Update(_UpdateFields):
    """A client's signed update: the hash of its weights delta and how it was trained."""

    kind: Literal["update"] = "update"
    signature: Blob

    def unsigned(self) -> UnsignedUpdate:
        """The signed part of this update."""
        return UnsignedUpdate(**self.model_dump(exclude={"kind", "signature"}))


class Rejection(_Record):
    """An update refused by a validation rule, recorded instead of aggregated."""

    kind: Literal["rejection"] = "rejection"
    client_id: NonNegInt
    round: NonNegInt
    nonce: Nonce
    rule: RejectionRule
    detail: Text


class Fallback(_Record):
    """A client's quantum job moved to the classical path because a resource failed."""

    kind: Literal["fallback"] = "fallback"
    client_id: NonNegInt
    round: NonNegInt
    resource: Name
    reason: Text


class RoundClose(_Record):
    """A round ends: the aggregate's hash, the clients it includes and the round metrics."""

    kind: Literal["round_close"] = "round_close"
    round: NonNegInt
    aggregate_weights_digest: Hash32
    accepted: tuple[NonNegInt, ...]
    metrics: Metrics  # micro-units

    @field_validator("accepted")
    @classmethod
    def _sorted_accepted(cls, accepted: tuple[int, ...]) -> tuple[int, ...]:
        _strictly_increasing(accepted, "accepted clients")
        return accepted

    @field_validator("metrics")
    @classmethod
    def _sorted(cls, metrics: dict[str, int]) -> dict[str, int]:
        return _sorted_metrics(metrics)


Transaction = Annotated[
    Genesis | RoundOpen | Update | Rejection | Fallback | RoundClose,
    Field(discriminator="kind"),
]
TX_TYPES: Final = (Genesis, RoundOpen, Update, Rejection, Fallback, RoundClose)
TX_KINDS: Final = tuple(t.model_fields["kind"].default for t in TX_TYPES)
_TX_ADAPTER: Final = TypeAdapter(Transaction)


def _is_plain(model_type: type[BaseModel]) -> bool:
    """Whether `model_dump(mode="python")` of `model_type` is its field values, as stored."""
    decorators = model_type.__pydantic_decorators__
    return not (
        decorators.field_serializers or decorators.model_serializers or decorators.computed_fields
    ) and not any(info.exclude for info in model_type.model_fields.values())


_PLAIN_UPDATES: Final = frozenset(t for t in (Update, UnsignedUpdate) if _is_plain(t))


def _field_values(model: BaseModel) -> dict[str, object]:
    """What `model_dump(mode="python")` gives for a validated record, without copying."""
    if type(model) in _PLAIN_RECORDS:
        return model.__dict__
    return model.model_dump(mode="python")


_KIND_VALIDATORS: Final = {
    t.model_fields["kind"].default: t.__pydantic_validator__ for t in TX_TYPES
}


def encode_tx(tx: Transaction) -> bytes:
    """The canonical bytes of a transaction (the Merkle leaf and the store's body)."""
    if not isinstance(tx, TX_TYPES):
        raise TypeError(f"not a ledger transaction: {type(tx).__name__}")
    memo = tx.__pydantic_private__
    if memo is not None:
        encoded = memo.get("_encoding")
        if encoded is not None:
            return encoded
    encoded = _memo(tx)["_encoding"] = encode_value(tx)
    return encoded


def decode_tx(data: bytes) -> Transaction:
    """Invert `encode_tx`; raise `LedgerIntegrityError` unless `data` is canonical."""
    return _decode_tx(data)[0]


def _decode_tx(data: bytes) -> tuple[Transaction, list[int]]:
    """`decode_tx`, and the offsets of the encoding's entries (`decode_with_entries`)."""
    if type(data) is not bytes:
        data = bytes(data)
    value, entries = _decode_top(data, True)  # decode_with_entries(data), without a call
    if entries is None:
        raise LedgerIntegrityError("a transaction encodes a dict of fields")
    kind = value.get("kind")
    # the bulk of a ledger: a plainly valid update is built as validation would build it
    tx = _update_from_value(value) if kind == "update" else None
    if tx is None:
        # The discriminated union validates with the model that "kind" names: call that
        # model's validator directly; for anything else, and for every failure, the union
        # decides (and words the error).
        validator = _KIND_VALIDATORS.get(kind) if type(kind) is str else None
        if validator is not None:
            try:
                tx = validator.validate_python(value)
            except ValidationError:
                tx = None
        if tx is None:
            try:
                tx = _TX_ADAPTER.validate_python(value)
            except ValidationError as exc:
                raise LedgerIntegrityError(f"not a valid transaction: {_first_error(exc)}") from exc
        # encode_tx(tx) == data, checked without encoding: data is the canonical encoding
        # of `value`, so it is tx's exactly when tx's fields encode as `value` does
        if not same_encoding(_field_values(tx), value):
            raise LedgerIntegrityError("transaction bytes are not its canonical encoding")
    _set_slot(tx, "__pydantic_private__", {"_encoding": data, "_entries": tuple(entries)})
    return tx, entries


_UPDATE_ORDER: Final = tuple(Update.model_fields)  # a validated Update's __dict__ order
_UPDATE_KEYS: Final = frozenset(_UPDATE_ORDER)
_UPDATE_PATHS: Final = frozenset(get_args(UpdatePath))
_update_values: Final = operator.itemgetter(*_UPDATE_ORDER)
if _UPDATE_ORDER != (  # the order _update_from_value unpacks (and validation builds)
    "client_id",
    "round",
    "nonce",
    "delta_digest",
    "num_examples",
    "path",
    "metrics",
    "kind",
    "signature",
):  # pragma: no cover - a changed Update must update _update_from_value too
    raise RuntimeError(f"Update's fields changed: {_UPDATE_ORDER}; update _update_from_value")


def _update_from_value(value: dict[Any, Any]) -> Update | None:
    """The `Update` that pydantic's validation of decoded `value` gives, built directly.

    None unless `value` plainly meets every constraint of `Update` (then the caller
    validates it with pydantic, which decides and words any error): exactly its fields,
    ``kind`` "update", ``client_id``, ``round`` and ``num_examples`` ints >= 0, ``nonce``
    16 bytes, ``delta_digest`` 32 bytes, ``signature`` bytes, ``path`` one of `UpdatePath`,
    ``metrics`` a dict of non-empty str to int (sorted, as `_UpdateFields._sorted` sorts
    it). Types are exact (``type(x) is int`` refuses bool), as strict validation of decoded
    values requires. Nothing is converted, so the record's fields encode exactly as `value`
    does (what `_decode_tx` otherwise checks with `same_encoding`). The result equals the
    validated record in every attribute, ``__dict__`` order included (tests check it).
    """
    if len(value) != len(_UPDATE_ORDER):
        return None
    try:  # all nine fields present (and, with the length, no other)
        client_id, round_, nonce, delta, examples, path, metrics, kind, signature = _update_values(
            value
        )
    except KeyError:
        return None
    if (
        kind != "update"
        or type(client_id) is not int
        or client_id < 0
        or type(round_) is not int
        or round_ < 0
        or type(examples) is not int
        or examples < 0
        or type(nonce) is not bytes
        or len(nonce) != NONCE_BYTES
        or type(delta) is not bytes
        or len(delta) != HASH_BYTES
        or type(signature) is not bytes
        or type(path) is not str
        or path not in _UPDATE_PATHS
        or type(metrics) is not dict
    ):
        return None
    for key, metric in metrics.items():
        if type(key) is not str or not key or type(metric) is not int:
            return None
    tx = object.__new__(Update)
    fields = {
        "client_id": client_id,
        "round": round_,
        "nonce": nonce,
        "delta_digest": delta,
        "num_examples": examples,
        "path": path,
        "metrics": dict(sorted(metrics.items())),  # as _UpdateFields._sorted
        "kind": kind,
        "signature": signature,
    }
    _set_slot(tx, "__dict__", fields)
    _set_slot(tx, "__pydantic_fields_set__", set(_UPDATE_ORDER))
    _set_slot(tx, "__pydantic_extra__", None)
    _set_slot(tx, "__pydantic_private__", None)
    return tx


def tx_hash(tx: Transaction) -> bytes:
    """The transaction's id: a domain-separated hash of its canonical bytes."""
    return domain_digest(DOMAIN_TX, encode_tx(tx))


_UPDATE_SIGNED_FIELDS: Final = tuple(UnsignedUpdate.model_fields)
_UPDATE_UNSIGNED_ONLY: Final = frozenset(Update.model_fields) - frozenset(_UPDATE_SIGNED_FIELDS)


def update_signing_payload(update: UnsignedUpdate | Update, run_id: str) -> bytes:
    """The 32-byte digest a client signs for `update` in run `run_id`.

    It binds the run, round, client, nonce, weights-delta hash, example count, path and
    metrics. An `Update`'s signature (and kind tag) are ignored, so a verifier can pass the
    recorded transaction itself.
    """
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("run_id must be a non-empty string")
    memo = update.__pydantic_private__
    if type(update) is Update and memo is not None and memo.get("_entries") is not None:
        # decoded from its canonical bytes: slice the signed fields out of them
        return _update_signing_payload_from_encoding(memo["_encoding"], memo["_entries"], run_id)
    values = update.__dict__
    if type(update) in _PLAIN_UPDATES and all(name in values for name in _UPDATE_SIGNED_FIELDS):
        fields = {name: values[name] for name in _UPDATE_SIGNED_FIELDS}
    else:
        fields = update.model_dump(exclude={"kind", "signature"})
    body = encode_value({"run_id": run_id, "update": fields})
    return domain_digest(DOMAIN_UPDATE_SIGNING, body)


def _signed_runs() -> tuple[int, tuple[tuple[int, int], ...]]:
    """How an `Update`'s canonical entries map onto its signed fields' encoding.

    A validated Update encodes exactly its fields, as dict entries in the order of their
    encoded keys; the signed fields are all of them but ``kind`` and ``signature``, and a
    dict without some entries encodes the remaining ones in the same order. Returns (entry
    count, runs): the signed fields' entries are entries ``[a, b)`` for each run (a, b).
    """
    order = sorted(Update.model_fields, key=encode_value)
    runs: list[tuple[int, int]] = []
    for position, name in enumerate(order):
        if name in _UPDATE_UNSIGNED_ONLY:
            continue
        if runs and runs[-1][1] == position:
            runs[-1] = (runs[-1][0], position + 1)
        else:
            runs.append((position, position + 1))
    return len(order), tuple(runs)


_UPDATE_ENTRIES, _SIGNED_RUNS = _signed_runs()
_SIGNED_FIELD_COUNT: Final = sum(b - a for a, b in _SIGNED_RUNS)
_SIGNING_DOMAIN_PREFIX: Final = domain_digest_prefix(DOMAIN_UPDATE_SIGNING)
_signing_prefixes: dict[str, bytes] = {}  # run_id -> hashed bytes before the signed fields


def _signing_prefix(run_id: str) -> bytes:
    prefix = _signing_prefixes.get(run_id)
    if prefix is None:
        if not isinstance(run_id, str) or not run_id:
            raise ValueError("run_id must be a non-empty string")
        # encode_value({"run_id": run_id, "update": fields}) is these bytes, then fields'
        # dict encoding: the two keys sort as written ("run_id" < "update", same length)
        prefix = b"".join(
            (
                _SIGNING_DOMAIN_PREFIX,
                b"d",
                (2).to_bytes(4, "big"),
                encode_value("run_id"),
                encode_value(run_id),
                encode_value("update"),
                b"d",
                _SIGNED_FIELD_COUNT.to_bytes(4, "big"),
            )
        )
        if len(_signing_prefixes) < 64:
            _signing_prefixes[run_id] = prefix
    return prefix


def _update_signing_payload_from_encoding(
    data: bytes, entries: Sequence[int], run_id: str
) -> bytes:
    """`update_signing_payload(decode_tx(data), run_id)`, from the update's canonical bytes.

    `data` must be the canonical bytes of a validated `Update` (as `_decode_tx` checks) and
    `entries` the offsets `_decode_tx` returned: the signed fields' encoding is then the
    update's own entries without ``kind`` and ``signature``, sliced out rather than encoded.
    """
    if len(entries) != _UPDATE_ENTRIES + 1:  # pragma: no cover - callers pass an Update
        raise LedgerIntegrityError("not the canonical encoding of an update")
    prefix = _signing_prefixes.get(run_id) or _signing_prefix(run_id)
    if len(_SIGNED_RUNS) == 2:  # an Update's signed entries form two runs (kind, signature)
        (a, b), (c, d) = _SIGNED_RUNS
        signed = data[entries[a] : entries[b]] + data[entries[c] : entries[d]]
    else:  # pragma: no cover - another field layout
        signed = b"".join(data[entries[a] : entries[b]] for a, b in _SIGNED_RUNS)
    return _sha3_256(prefix + signed).digest()


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


# --------------------------------------------------------------------------- blocks

Certificate = tuple[tuple[NonNegInt, Blob], ...]  # (validator index, signature of block hash)
_CERT_ADAPTER: Final = TypeAdapter(Certificate)


class BlockHeader(_Record):
    """What a block hash covers; the genesis block's `prev_hash` is 32 zero bytes."""

    height: NonNegInt
    prev_hash: Hash32
    merkle_root: Hash32
    proposer: NonNegInt  # validator index
    round: NonNegInt

    @model_validator(mode="after")
    def _genesis_links_to_zero(self) -> BlockHeader:
        if (self.height == 0) != (self.prev_hash == ZERO_HASH):
            raise ValueError("exactly the genesis block (height 0) has prev_hash = 32 zero bytes")
        return self


_PLAIN_RECORDS: Final = frozenset(t for t in (*TX_TYPES, BlockHeader) if _is_plain(t))


def encode_header(header: BlockHeader) -> bytes:
    """The canonical bytes of a block header (what `block_hash` hashes)."""
    return encode_value(header)


def decode_header(data: bytes) -> BlockHeader:
    """Invert `encode_header`; raise `LedgerIntegrityError` unless `data` is canonical."""
    value = decode_value(data)
    try:
        header = BlockHeader.model_validate(value)
    except ValidationError as exc:
        raise LedgerIntegrityError(f"not a valid block header: {_first_error(exc)}") from exc
    if not same_encoding(_field_values(header), value):  # encode_header(header) == data
        raise LedgerIntegrityError("header bytes are not its canonical encoding")
    return header


def block_hash(header: BlockHeader) -> bytes:
    """The block's hash: over the canonical header only (the certificate signs it)."""
    return domain_digest(DOMAIN_BLOCK_HEADER, encode_header(header))


def encode_certificate(certificate: Certificate) -> bytes:
    """The canonical bytes of a quorum certificate."""
    return encode_value(_validate_certificate(_CERT_ADAPTER.validate_python(certificate)))


def decode_certificate(data: bytes) -> Certificate:
    """Invert `encode_certificate`; raise `LedgerIntegrityError` on malformed bytes."""
    try:
        return _validate_certificate(_CERT_ADAPTER.validate_python(decode_value(data)))
    except (ValidationError, ValueError) as exc:
        raise LedgerIntegrityError(f"not a valid quorum certificate: {exc}") from exc


def _validate_certificate(certificate: Certificate) -> Certificate:
    _strictly_increasing([index for index, _ in certificate], "certificate validator indices")
    return certificate


def transactions_root(transactions: Sequence[Transaction]) -> bytes:
    """The Merkle root over the transactions' canonical bytes."""
    return root_of_hashes([_leaf(tx) for tx in transactions])


def _leaf(tx: Transaction) -> bytes:
    """`leaf_hash(encode_tx(tx))`, remembered with the encoding (`forget_encoding` drops both)."""
    memo = tx.__pydantic_private__
    if memo is not None:
        leaf = memo.get("_leaf")
        if leaf is not None:
            return leaf
    leaf = leaf_hash(encode_tx(tx))
    _memo(tx)["_leaf"] = leaf
    return leaf


class Block(_Record):
    """A header, its transactions (in Merkle order) and the quorum certificate on its hash."""

    header: BlockHeader
    transactions: tuple[Transaction, ...]
    certificate: Certificate = ()

    @field_validator("certificate")
    @classmethod
    def _sorted_certificate(cls, certificate: Certificate) -> Certificate:
        return _validate_certificate(certificate)

    @model_validator(mode="after")
    def _root_matches(self) -> Block:
        if transactions_root(self.transactions) != self.header.merkle_root:
            raise ValueError("header merkle_root does not match the transactions")
        return self

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def hash(self) -> bytes:
        """`block_hash` of the header."""
        return block_hash(self.header)

    def with_certificate(self, certificate: Certificate) -> Block:
        """This block with its quorum certificate replaced."""
        return Block(header=self.header, transactions=self.transactions, certificate=certificate)


def make_block(
    *,
    height: int,
    prev_hash: bytes,
    proposer: int,
    round: int,
    transactions: Sequence[Transaction],
    certificate: Certificate = (),
) -> Block:
    """A block over `transactions`, its header's Merkle root computed here."""
    header = BlockHeader(
        height=height,
        prev_hash=prev_hash,
        merkle_root=transactions_root(transactions),
        proposer=proposer,
        round=round,
    )
    return Block(header=header, transactions=tuple(transactions), certificate=certificate)
