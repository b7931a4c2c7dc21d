"""The fast decode / encode / verify paths accept exactly what the reference definitions do.

`ledger.encoding` decodes through learned templates, then a one-pass decoder, and only then
the reference decoder (parse, re-encode, compare); `ledger.records` checks a decoded
transaction against its bytes structurally and derives the update signing payload from
the bytes; `ledger.store` hashes the Merkle leaves inline. Each is checked here against
the plain definition it replaces, on honest and on tampered input.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.encoding as enc
from ledger.encoding import (
    LedgerIntegrityError,
    decode_value,
    decode_with_entries,
    digest,
    encode_value,
    same_encoding,
)
from ledger.merkle import merkle_root
from ledger.records import (
    Genesis,
    Rejection,
    UnsignedUpdate,
    Update,
    _decode_tx,
    _update_signing_payload_from_encoding,
    decode_tx,
    encode_tx,
    update_signing_payload,
)

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=40) | st.binary(max_size=40)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=6) | st.integers(), children, max_size=5)
    ),
    max_leaves=20,
)


def typed(value: Any) -> Any:
    """A type-aware normal form: True != 1 here, a list and a tuple are one sequence."""
    if value is None or isinstance(value, bool | int | str | bytes):
        return (type(value).__name__, value)
    if isinstance(value, list | tuple):
        return ("l", tuple(typed(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((typed(k), typed(v)) for k, v in value.items()))
    raise AssertionError(type(value))


def reference(data: bytes) -> tuple[str, Any]:
    """What the reference decoder says: ("ok", typed value) or ("error", None)."""
    try:
        return "ok", typed(enc._decode_reference(data))
    except LedgerIntegrityError:
        return "error", None


def fast(data: bytes) -> tuple[str, Any]:
    try:
        return "ok", typed(decode_value(data))
    except LedgerIntegrityError:
        return "error", None


def entries_of(value: dict) -> list[bytes]:
    """The encoded entries of a dict in canonical order (key bytes + value bytes)."""
    return sorted(encode_value(k) + encode_value(v) for k, v in value.items())


LEARNED = enc._TEMPLATE_SIGHTINGS + 2  # decodes after which a template is in use


@pytest.fixture(autouse=True)
def fresh_caches(monkeypatch):
    """Each test learns its own templates and shapes (the caches are process-wide)."""
    monkeypatch.setattr(enc, "_templates", {})
    monkeypatch.setattr(enc, "_template_sightings", {})
    monkeypatch.setattr(enc, "_template_count", 0)
    monkeypatch.setattr(enc, "_shapes", {})
    monkeypatch.setattr(enc, "_shape_count", 0)


def warm(data: bytes) -> None:
    """Decode `data` often enough that a template for it is learned (when it is eligible)."""
    for _ in range(LEARNED):
        decode_value(data)


def update(**changes: Any) -> Update:
    fields: dict[str, Any] = dict(
        client_id=3,
        round=1,
        nonce=b"\x07" * 16,
        delta_digest=digest(b"delta"),
        num_examples=120,
        path="quantum",
        metrics={"loss": 693_147, "acc": 500_000},
    )
    return UnsignedUpdate(**{**fields, **changes}).signed(b"\xaa" * 3309)


# --------------------------------------------------------------------------- ints


@pytest.mark.parametrize("n", [1, 2])
def test_int_pattern_is_exactly_the_minimal_ints(n):
    import re

    pattern = re.compile(enc._int_pattern(n), re.DOTALL)
    for raw in itertools.product(range(256), repeat=n):
        data = bytes(raw)
        value = int.from_bytes(data, "big", signed=True)
        canonical = enc._int_canonical_len(value) == n
        assert (pattern.fullmatch(data) is not None) == canonical, data


@settings(deadline=None)
@given(st.integers(min_value=3, max_value=12), st.binary(min_size=12, max_size=12))
def test_int_pattern_longer_ints(n, raw):
    import re

    data = raw[:n]
    value = int.from_bytes(data, "big", signed=True)
    matched = re.fullmatch(enc._int_pattern(n), data, re.DOTALL) is not None
    assert matched == (enc._int_canonical_len(value) == n)


# --------------------------------------------------------------------------- decoding


@settings(deadline=None, max_examples=300)
@given(values)
def test_every_decoder_agrees_on_canonical_bytes(value):
    data = encode_value(value)
    template = enc._compile_template(data)
    assert fast(data) == reference(data) == ("ok", typed(value))
    if template is not None:
        match = template.fullmatch(data)
        assert match is not None
        assert typed(template.build(match.groups())) == typed(value)
    got, offsets = decode_with_entries(data)
    assert typed(got) == typed(value)
    if isinstance(value, dict):
        assert [data[a:b] for a, b in itertools.pairwise(offsets)] == entries_of(value)
        assert offsets[-1] == len(data)
    else:
        assert offsets is None


@settings(deadline=None, max_examples=400)
@given(values, st.data())
def test_templates_accept_exactly_what_the_reference_accepts(value, data_strategy):
    """Flip, drop or insert bytes of an encoding a template was learned from."""
    data = encode_value(value)
    template = enc._compile_template(data)
    mutated = bytearray(data)
    if data:
        position = data_strategy.draw(st.integers(0, len(data) - 1))
        action = data_strategy.draw(st.sampled_from(["xor", "set", "drop", "insert"]))
        byte = data_strategy.draw(st.integers(0, 255))
        if action == "xor":
            mutated[position] ^= byte or 1
        elif action == "set":
            mutated[position] = byte
        elif action == "drop":
            del mutated[position]
        else:
            mutated.insert(position, byte)
    mutated_bytes = bytes(mutated)
    expected = reference(mutated_bytes)
    assert fast(mutated_bytes) == expected
    if template is not None:
        match = template.fullmatch(mutated_bytes)
        if match is not None:  # whatever a template matches and builds is canonical
            try:
                built = template.build(match.groups())
            except UnicodeDecodeError:
                assert expected == ("error", None)
            else:
                assert expected == ("ok", typed(built))
                if isinstance(built, dict):
                    offsets = template.entries
                    assert [mutated_bytes[a:b] for a, b in itertools.pairwise(offsets)] == (
                        entries_of(built)
                    )


def test_learned_templates_still_refuse_non_canonical_bytes():
    value = {"round": 5, "name": "x" * 40, "blob": b"\x01" * 80, "flag": True}
    data = encode_value(value)
    warm(data)
    assert enc._templates.get((len(data), data[: enc._TEMPLATE_PREFIX]))  # learned
    assert decode_value(data) == value
    long_name = encode_value("x" * 40)
    bad_utf8 = data.replace(long_name, long_name[:-1] + b"\xff")
    int_five = encode_value(5)
    assert len(bad_utf8) == len(data)
    for bad in (
        bad_utf8,  # same structure, a string that is not UTF-8
        data.replace(b"b\x01", b"b\x02"),  # bool neither 0 nor 1
        data + b"\x00",  # trailing byte
        data[:-1],  # truncated
        data.replace(int_five, b"i\x00\x00\x00\x02\x00\x05"),  # non-minimal int
        data.replace(int_five, b"i\x00\x00\x00\x01\x00"),  # 0 encoded with a byte
    ):
        assert reference(bad) == ("error", None)
        with pytest.raises(LedgerIntegrityError):
            decode_value(bad)
        with pytest.raises(LedgerIntegrityError):
            decode_with_entries(bad)


def test_templates_are_bounded():
    for i in range(3 * enc._TEMPLATES_MAX):
        data = encode_value({f"k{i}": b"\x00" * 64, "i": i})
        warm(data)
    assert enc._template_count <= enc._TEMPLATES_MAX
    assert len(enc._template_sightings) <= enc._SIGHTINGS_MAX
    assert sum(map(len, enc._shapes.values())) <= enc._SHAPES_MAX


# --------------------------------------------------------------------------- same_encoding


@settings(deadline=None, max_examples=400)
@given(values, values)
def test_same_encoding_is_encoding_equality(value, other):
    decoded = decode_value(encode_value(other))
    assert same_encoding(value, decoded) == (encode_value(value) == encode_value(decoded))
    decoded_self = decode_value(encode_value(value))
    assert same_encoding(value, decoded_self)


@pytest.mark.parametrize(
    ("value", "decoded", "same"),
    [
        (0, False, False),
        (1, True, False),
        ({"a": 1}, {"a": True}, False),
        ({1: "x"}, {"1": "x"}, False),
        ([1, 2], (1, 2), True),
        ({"a": [b"x"]}, {"a": (b"x",)}, True),
        (bytearray(b"ab"), b"ab", True),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
    ],
)
def test_same_encoding_cases(value, decoded, same):
    assert same_encoding(value, decoded) is same


def test_same_encoding_raises_what_encoding_raises():
    with pytest.raises(TypeError):
        same_encoding({True: 1}, {1: 1})
    with pytest.raises(TypeError):
        same_encoding({"a": 1.0}, {"a": 1})


# --------------------------------------------------------------------------- transactions


def test_genesis_with_a_bool_for_its_literal_round_is_not_canonical():
    """Literal[0] accepts False: only the bytes check catches the different encoding."""
    genesis = Genesis(
        run_id="r",
        config_hash=digest(b"c"),
        crypto_backend="cryptography",
        validators=[(0, b"\x01" * 64)],
        clients=[(1, b"\x02" * 64)],
    )
    data = encode_tx(genesis)
    for _ in range(LEARNED):
        assert decode_tx(data) == genesis
    bad = data.replace(
        encode_value("created_round") + encode_value(0),
        encode_value("created_round") + encode_value(False),
    )
    assert bad != data
    for _ in range(LEARNED):  # with a template of `bad`'s shape learned too, if any
        with pytest.raises(LedgerIntegrityError, match="canonical"):
            decode_tx(bad)


def test_kind_dispatch_refuses_what_the_union_refuses():
    base = {"client_id": 1, "round": 1, "nonce": b"\x00" * 16}
    for kind in ("update", "nope", ("update",), {"k": 1}, 7, None):
        with pytest.raises(LedgerIntegrityError, match="not a valid transaction"):
            decode_tx(encode_value({**base, "kind": kind}))


metric_names = st.text(min_size=1, max_size=12)


@settings(deadline=None, max_examples=200)
@given(
    client_id=st.integers(min_value=0, max_value=2**70),
    round_=st.integers(min_value=0, max_value=2**40),
    num_examples=st.integers(min_value=0, max_value=2**20),
    path=st.sampled_from(["classical", "quantum", "fallback"]),
    metrics=st.dictionaries(
        metric_names | st.sampled_from(["kind", "signature", "run_id"]),
        st.integers(-(2**64), 2**64),
        max_size=5,
    ),
    signature=st.binary(max_size=64) | st.just(b"\x5a" * 3309),
    run_id=st.text(min_size=1, max_size=20),
)
def test_signing_payload_from_bytes_is_the_signing_payload(
    client_id, round_, num_examples, path, metrics, signature, run_id
):
    unsigned = UnsignedUpdate(
        client_id=client_id,
        round=round_,
        nonce=digest(b"n%d" % client_id)[:16],
        delta_digest=digest(b"d"),
        num_examples=num_examples,
        path=path,
        metrics=metrics,
    )
    signed = unsigned.signed(signature)
    data = encode_tx(signed)
    for _ in range(LEARNED):  # generic decoder, then learned template
        tx, entries = _decode_tx(data)
        assert tx == signed
        expected = update_signing_payload(unsigned, run_id)
        assert update_signing_payload(signed, run_id) == expected
        assert update_signing_payload(tx, run_id) == expected
        assert _update_signing_payload_from_encoding(data, entries, run_id) == expected


def test_signing_payload_of_constructed_and_subclassed_updates():
    signed = update()
    expected = update_signing_payload(signed, "run")
    constructed = Update.model_construct(**dict(signed))
    assert update_signing_payload(constructed, "run") == expected

    class Tagged(Update):
        pass

    assert update_signing_payload(Tagged(**dict(signed)), "run") == expected
    with pytest.raises(ValueError, match="run_id"):
        update_signing_payload(signed, "")
    with pytest.raises(ValueError, match="run_id"):
        _update_signing_payload_from_encoding(*_decode_tx(encode_tx(signed)), "")


def test_round_trip_of_every_kind_after_templates_are_learned():
    txs = [
        update(),
        update(client_id=0, metrics={}),
        Rejection(client_id=0, round=1, nonce=b"\x08" * 16, rule="norm_bound", detail="é" * 50),
    ]
    for tx in txs:
        data = encode_tx(tx)
        for _ in range(LEARNED):
            assert decode_tx(data) == tx
            assert encode_tx(decode_tx(data)) == data


# --------------------------------------------------------------------------- merkle


def test_store_leaf_hashes_are_merkle_leaves(tmp_path):
    from ledger.records import make_block
    from ledger.store import LedgerStore, _verify_stored_encoded

    txs = [update(client_id=i, nonce=bytes([i]) * 16) for i in range(5)]
    block = make_block(height=0, prev_hash=bytes(32), proposer=0, round=1, transactions=txs)
    with LedgerStore(tmp_path / "l.db") as store:
        store.append(block)
        stored = store.stored(0)
        got, encoded = _verify_stored_encoded(stored, bytes(32))
    assert got == block
    assert [body for body, _ in encoded] == [encode_tx(tx) for tx in txs]
    assert merkle_root([body for body, _ in encoded]) == block.header.merkle_root


def test_values_too_large_for_a_template_still_decode():
    value = {"sampled": tuple(range(1, 300)), "blob": b"\x01" * 64}
    data = encode_value(value)
    assert enc._compile_template(data) is None
    for _ in range(2 * LEARNED):
        assert decode_value(data) == value
    assert not enc._templates.get((len(data), data[: enc._TEMPLATE_PREFIX]))
