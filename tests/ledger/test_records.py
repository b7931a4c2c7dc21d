"""Records: strict frozen models, exact round trips, the signing payload, blocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ledger.encoding import decode_value, digest, encode_value
from ledger.merkle import merkle_root
from ledger.records import (
    KEM_KEY_BYTES,
    ZERO_HASH,
    Block,
    BlockHeader,
    Fallback,
    Genesis,
    Rejection,
    RoundClose,
    RoundOpen,
    Transaction,
    UnsignedUpdate,
    Update,
    block_hash,
    decode_certificate,
    decode_header,
    decode_tx,
    encode_certificate,
    encode_header,
    encode_tx,
    make_block,
    transactions_root,
    tx_hash,
    update_signing_payload,
)
from ledger.store import LedgerIntegrityError

RUN = "run-0001"


def genesis() -> Genesis:
    return Genesis(
        run_id=RUN,
        config_hash=digest(b"config"),
        crypto_backend="cryptography",
        validators=[(0, b"\x01" * 40), (1, b"\x02" * 40), (2, b"\x03" * 40)],
        clients=[(0, b"\x10" * 40), (3, b"\x13" * 40)],
    )


def kem_key(fill: int) -> bytes:
    return bytes([fill]) * KEM_KEY_BYTES


def genesis_with_kem_keys() -> Genesis:
    return Genesis(**{**genesis().model_dump(), "kem_keys": [(0, kem_key(1)), (3, kem_key(2))]})


def round_open() -> RoundOpen:
    return RoundOpen(
        round=1, beacon=digest(b"beacon"), sampled=[0, 3], plan={3: "quantum", 0: "classical"}
    )


def unsigned(**changes) -> UnsignedUpdate:
    fields = dict(
        client_id=3,
        round=1,
        nonce=b"\x07" * 16,
        delta_digest=digest(b"delta"),
        num_examples=120,
        path="quantum",
        metrics={"loss": 693_147, "acc": 500_000},
    )
    return UnsignedUpdate(**{**fields, **changes})


def update() -> Update:
    return unsigned().signed(b"\xaa" * 3309)


def rejection() -> Rejection:
    return Rejection(
        client_id=0, round=1, nonce=b"\x08" * 16, rule="norm_bound", detail="12.5 > 10"
    )


def fallback() -> Fallback:
    return Fallback(client_id=3, round=1, resource="ibm_brisbane", reason="queue timeout")


def round_close() -> RoundClose:
    return RoundClose(
        round=1,
        aggregate_weights_digest=digest(b"w1"),
        accepted=[3],
        metrics={"test_accuracy": 912_345, "round_seconds": 4_200_000},
    )


ALL = [genesis, round_open, update, rejection, fallback, round_close]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("make", ALL)
def test_canonical_round_trip_is_exact(make):
    tx = make()
    data = encode_tx(tx)
    back = decode_tx(data)
    assert back == tx and type(back) is type(tx)
    assert encode_tx(back) == data
    assert tx_hash(back) == tx_hash(tx)


@pytest.mark.parametrize("make", ALL)
def test_json_round_trip_with_hex_bytes(make):
    tx = make()
    adapter = TypeAdapter(Transaction)
    text = adapter.dump_json(tx).decode()
    assert "\\x" not in text
    assert adapter.validate_json(text) == tx
    assert type(tx).model_validate_json(tx.model_dump_json()) == tx


def test_kinds_are_distinct_tags():
    kinds = [make().kind for make in ALL]
    assert len(set(kinds)) == len(kinds)
    assert decode_value(encode_tx(update()))["kind"] == "update"


def test_models_are_frozen_and_forbid_extra_fields():
    tx = update()
    with pytest.raises(ValidationError):
        tx.round = 2
    with pytest.raises(ValidationError):
        Fallback(client_id=1, round=1, resource="x", reason="y", extra=1)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "changes",
    [
        {"client_id": "3"},
        {"client_id": 3.0},
        {"client_id": True},
        {"client_id": -1},
        {"round": 1.5},
        {"nonce": b"\x07" * 15},
        {"nonce": "07" * 16},
        {"delta_digest": b"\x00" * 31},
        {"num_examples": -1},
        {"path": "gpu"},
        {"metrics": {"loss": 0.69}},
        {"metrics": {"loss": True}},
        {"metrics": {"": 1}},
    ],
)
def test_update_fields_are_strict(changes):
    with pytest.raises(ValidationError):
        unsigned(**changes)


@pytest.mark.parametrize(
    ("make", "changes"),
    [
        (genesis, {"validators": [(1, b"k"), (0, b"k")]}),  # unsorted
        (genesis, {"validators": [(0, b"k"), (0, b"j")]}),  # duplicate
        (genesis, {"validators": []}),
        (genesis, {"clients": [(0, b"")]}),  # empty key
        (genesis, {"created_round": 1}),
        (genesis, {"config_hash": b"short"}),
        (genesis, {"kem_keys": [(0, kem_key(1))]}),  # misses client 3
        (genesis, {"kem_keys": [(0, kem_key(1)), (4, kem_key(2))]}),  # 4 is no client
        (genesis, {"kem_keys": [(3, kem_key(1)), (0, kem_key(2))]}),  # unsorted
        (genesis, {"kem_keys": [(0, kem_key(1)), (3, b"\x02" * 40)]}),  # not 1184 bytes
        (round_open, {"sampled": [3, 0]}),
        (round_open, {"plan": {0: "classical"}}),  # misses client 3
        (round_open, {"plan": {0: "classical", 3: "fallback"}}),
        (rejection, {"rule": "too_big"}),
        (round_close, {"accepted": [3, 3]}),
        (round_close, {"aggregate_weights_digest": b""}),
    ],
)
def test_invalid_records_are_refused(make, changes):
    fields = {**make().model_dump(), **changes}
    with pytest.raises(ValidationError):
        type(make())(**fields)


def test_genesis_encodes_its_kem_keys_and_each_of_their_bits():
    plain, with_keys = genesis(), genesis_with_kem_keys()
    assert plain.kem_keys == ()
    assert decode_value(encode_tx(plain))["kem_keys"] == ()  # the empty field is encoded too
    back = decode_tx(encode_tx(with_keys))
    assert back == with_keys and dict(back.kem_keys) == {0: kem_key(1), 3: kem_key(2)}
    assert tx_hash(with_keys) != tx_hash(plain)
    # one flipped bit in a registered key is another transaction (another Merkle leaf)
    data = encode_tx(with_keys)
    at = data.index(kem_key(2)) + 500
    flipped = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
    other = decode_tx(flipped)
    assert other != with_keys and tx_hash(other) != tx_hash(with_keys)
    assert dict(other.kem_keys)[3] != kem_key(2) and dict(other.kem_keys)[0] == kem_key(1)


def test_maps_are_kept_in_canonical_order():
    assert list(round_open().plan) == [0, 3]
    assert list(update().metrics) == ["acc", "loss"]


# --------------------------------------------------------------------------- decoding


def test_encode_tx_refuses_non_transactions():
    with pytest.raises(TypeError):
        encode_tx(unsigned())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_tx({"kind": "fallback"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        [1, 2],
        {"kind": "nope"},
        {**update().model_dump(), "extra": 1},
        {k: v for k, v in update().model_dump().items() if k != "signature"},
        {k: v for k, v in genesis().model_dump().items() if k != "created_round"},  # default
        {k: v for k, v in genesis().model_dump().items() if k != "kem_keys"},  # default ()
        {**genesis().model_dump(), "kem_keys": [(3, kem_key(1))]},  # not every client
        unsigned().model_dump(),  # no kind
        {**update().model_dump(), "round": "1"},
    ],
)
def test_decode_tx_refuses_what_is_not_a_canonical_transaction(value):
    with pytest.raises(LedgerIntegrityError):
        decode_tx(encode_value(value))


def test_decode_tx_refuses_garbage():
    with pytest.raises(LedgerIntegrityError):
        decode_tx(b"\x00garbage")
    with pytest.raises(LedgerIntegrityError):
        decode_tx(encode_tx(update()) + b"\x00")


# --------------------------------------------------------------------------- signing payload


def test_signing_payload_ignores_signature_and_binds_everything_else():
    base = unsigned()
    payload = update_signing_payload(base, RUN)
    assert len(payload) == 32
    assert update_signing_payload(base.signed(b"x"), RUN) == payload
    assert update_signing_payload(base.signed(b"y"), RUN) == payload
    assert base.signed(b"x").unsigned() == base
    assert update_signing_payload(base, "run-0002") != payload
    variants = [
        {"client_id": 4},
        {"round": 2},
        {"nonce": b"\x09" * 16},
        {"delta_digest": digest(b"other")},
        {"num_examples": 121},
        {"path": "fallback"},
        {"metrics": {"loss": 693_148, "acc": 500_000}},
        {"metrics": {"loss": 693_147}},
    ]
    payloads = {update_signing_payload(unsigned(**v), RUN) for v in variants}
    assert len(payloads) == len(variants) and payload not in payloads
    # It is neither the transaction hash nor the hash of the unsigned body.
    assert payload not in (tx_hash(base.signed(b"x")), digest(encode_value(base)))
    with pytest.raises(ValueError):
        update_signing_payload(base, "")


# --------------------------------------------------------------------------- properties

_ids = st.integers(0, 2**40)
_h32 = st.binary(min_size=32, max_size=32)
_metrics = st.dictionaries(
    st.text(min_size=1, max_size=6), st.integers(-(2**63), 2**63), max_size=3
)
_updates = st.builds(
    Update,
    client_id=_ids,
    round=_ids,
    nonce=st.binary(min_size=16, max_size=16),
    delta_digest=_h32,
    num_examples=_ids,
    path=st.sampled_from(["classical", "quantum", "fallback"]),
    metrics=_metrics,
    signature=st.binary(max_size=8),
)
transactions = st.one_of(
    _updates,
    st.builds(
        Rejection,
        client_id=_ids,
        round=_ids,
        nonce=st.binary(min_size=16, max_size=16),
        rule=st.sampled_from(["unregistered", "bad_signature", "norm_bound"]),
        detail=st.text(max_size=8),
    ),
    st.builds(
        Fallback,
        client_id=_ids,
        round=_ids,
        resource=st.text(min_size=1, max_size=6),
        reason=st.text(max_size=6),
    ),
    st.builds(
        RoundClose,
        round=_ids,
        aggregate_weights_digest=_h32,
        accepted=st.sets(_ids, max_size=4).map(sorted),
        metrics=_metrics,
    ),
    st.sets(_ids, max_size=4).flatmap(
        lambda ids: st.builds(
            RoundOpen,
            round=_ids,
            beacon=st.binary(min_size=1, max_size=8),
            sampled=st.just(sorted(ids)),
            plan=st.fixed_dictionaries({i: st.sampled_from(["classical", "quantum"]) for i in ids}),
        )
    ),
)


@settings(deadline=None)
@given(transactions)
def test_every_transaction_round_trips(tx):
    assert decode_tx(encode_tx(tx)) == tx


@settings(deadline=None)
@given(transactions, transactions)
def test_distinct_transactions_encode_distinctly(a, b):
    assert (encode_tx(a) == encode_tx(b)) == (a == b)
    assert (tx_hash(a) == tx_hash(b)) == (a == b)


# --------------------------------------------------------------------------- blocks


def _block(height: int = 1, **changes) -> Block:
    fields = dict(
        height=height,
        prev_hash=ZERO_HASH if height == 0 else digest(b"prev"),
        proposer=2,
        round=1,
        transactions=[round_open(), update(), rejection(), fallback(), round_close()],
    )
    return make_block(**{**fields, **changes})


def test_make_block_computes_the_merkle_root():
    block = _block()
    assert block.header.merkle_root == merkle_root([encode_tx(t) for t in block.transactions])
    assert block.header.merkle_root == transactions_root(block.transactions)
    assert _block(transactions=[]).header.merkle_root == digest(b"")


def test_block_refuses_a_header_that_does_not_match_its_transactions():
    block = _block()
    with pytest.raises(ValidationError, match="merkle_root"):
        Block(header=block.header, transactions=block.transactions[:-1])


def test_block_hash_covers_the_header_but_not_the_certificate():
    block = _block()
    signed = block.with_certificate([(0, b"sig0"), (2, b"sig2")])
    assert signed.hash == block.hash == block_hash(block.header)
    assert len(block.hash) == 32
    assert block.hash != digest(encode_header(block.header))  # domain-separated
    for changes in [
        {"height": 2},
        {"prev_hash": digest(b"other")},
        {"proposer": 1},
        {"round": 2},
        {"transactions": [update()]},
    ]:
        assert _block(**changes).hash != block.hash


def test_genesis_block_links_to_zero_hash_and_only_it():
    _block(0, transactions=[genesis()])
    with pytest.raises(ValidationError):
        _block(0, prev_hash=digest(b"x"))
    with pytest.raises(ValidationError):
        _block(1, prev_hash=ZERO_HASH)


def test_certificate_is_sorted_by_validator_and_round_trips():
    cert = ((0, b"a"), (5, b"b"))
    assert decode_certificate(encode_certificate(cert)) == cert
    with pytest.raises(ValidationError):
        _block().with_certificate([(5, b"b"), (0, b"a")])
    with pytest.raises(ValidationError):
        _block().with_certificate([(1, b"b"), (1, b"a")])
    with pytest.raises(LedgerIntegrityError):
        decode_certificate(encode_value([[1, b"b"], [1, b"a"]]))
    with pytest.raises(LedgerIntegrityError):
        decode_certificate(encode_value([[1, "not bytes"]]))


def test_header_round_trip_and_block_json():
    block = _block().with_certificate([(1, b"\x00\xff")])
    assert decode_header(encode_header(block.header)) == block.header
    with pytest.raises(LedgerIntegrityError):
        decode_header(encode_header(block.header)[:-1])
    with pytest.raises(LedgerIntegrityError):
        decode_header(encode_value({**block.header.model_dump(), "height": -1}))
    assert Block.model_validate_json(block.model_dump_json()) == block
    assert isinstance(BlockHeader.model_validate(block.header.model_dump()), BlockHeader)


# --------------------------------------------------------------------------- the update fast path

_any_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**70),
    st.binary(max_size=40),
    st.text(max_size=5),
)
_wrong = {
    "client_id": _any_scalar,
    "round": _any_scalar,
    "nonce": _any_scalar,
    "delta_digest": _any_scalar,
    "num_examples": _any_scalar,
    "path": st.one_of(st.just("other"), _any_scalar),
    "metrics": st.one_of(
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.integers(0, 3)),
            st.one_of(st.integers(-5, 2**40), st.booleans(), st.text(max_size=2)),
            max_size=3,
        ),
        _any_scalar,
    ),
    "kind": st.one_of(st.just("rejection"), _any_scalar),
    "signature": _any_scalar,
}


@st.composite
def _update_like(draw) -> dict:
    """A valid update's field dict, then up to two fields replaced, a field dropped, or
    one added (most draws are valid updates or one step from one)."""
    value = draw(_updates).model_dump()
    for name in draw(st.lists(st.sampled_from(sorted(_wrong)), max_size=2, unique=True)):
        value[name] = draw(_wrong[name])
    if draw(st.integers(0, 9)) == 0:
        del value[draw(st.sampled_from(sorted(value)))]
    if draw(st.integers(0, 9)) == 0:
        value["extra"] = draw(_any_scalar)
    return value


def _reference_decode(data: bytes):
    """What decoding gives without the fast path: the union's validation and the check."""
    value = decode_value(data)
    try:
        tx = TypeAdapter(Transaction).validate_python(value)
    except ValidationError:
        return None
    return tx if encode_tx(tx.model_copy(update={})) == data else None


@settings(deadline=None, max_examples=400)
@given(_update_like())
def test_the_update_fast_path_decides_as_validation_does(value):
    data = encode_value(value)
    expected = _reference_decode(data)
    if expected is None:
        with pytest.raises(LedgerIntegrityError):
            decode_tx(data)
        return
    got = decode_tx(data)
    assert type(got) is type(expected)
    assert list(got.__dict__.items()) == list(expected.__dict__.items())  # order too
    assert got.__pydantic_fields_set__ == expected.__pydantic_fields_set__
    assert got.__pydantic_extra__ == expected.__pydantic_extra__
    assert got.model_dump_json() == expected.model_dump_json()
    assert encode_tx(got) == data


def test_the_update_fast_path_takes_a_valid_update_and_leaves_the_rest():
    from ledger.records import _update_from_value

    value = decode_value(encode_tx(update()))
    fast = _update_from_value(value)
    assert fast is not None and fast == update()
    for change in (
        {"client_id": -1},
        {"round": True},
        {"nonce": b"\x07" * 15},
        {"delta_digest": "x" * 32},
        {"path": "elsewhere"},
        {"metrics": {"": 1}},
        {"metrics": {"loss": 1.5}},
        {"kind": "rejection"},
        {"signature": None},
    ):
        assert _update_from_value({**value, **change}) is None, change
    assert _update_from_value({k: v for k, v in value.items() if k != "nonce"}) is None
    assert _update_from_value({**value, "extra": 1}) is None
