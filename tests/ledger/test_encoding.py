"""Canonical encoding: exact bytes, refusal of floats, injectivity, strict decoding."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict

from ledger.encoding import (
    LedgerIntegrityError,
    decode_value,
    digest,
    domain_digest,
    encode_model,
    encode_value,
    from_micro,
    metrics_to_micro,
    to_micro,
    weights_digest,
)
from qfl.errors import QflError

scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=4) | st.integers(), children, max_size=4)
    ),
    max_leaves=16,
)


def typed(value: Any) -> Any:
    """A type-aware normal form: True != 1 here, a list and a tuple are one sequence."""
    if value is None:
        return ("N",)
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", value)
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bytes):
        return ("y", value)
    if isinstance(value, list | tuple):
        return ("l", tuple(typed(v) for v in value))
    if isinstance(value, dict):
        return ("d", frozenset((typed(k), typed(v)) for k, v in value.items()))
    raise AssertionError(type(value))


# --------------------------------------------------------------------------- hashes


def test_digest_is_sha3_256():
    assert digest(b"abc") == hashlib.sha3_256(b"abc").digest()
    assert len(digest(b"")) == 32


def test_weights_digest_hashes_little_endian_float32_bytes():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    expected = hashlib.sha3_256(arr.astype("<f4").tobytes()).digest()
    assert weights_digest(arr) == expected
    assert weights_digest(arr.astype(np.float64)) == expected  # same values, cast to f4
    assert weights_digest(arr.astype(">f4")) == expected  # byte order does not matter
    assert weights_digest(np.asfortranarray(arr)) == expected  # nor memory layout
    assert weights_digest(arr.T) == hashlib.sha3_256(arr.T.copy().tobytes()).digest()
    changed = arr.copy()
    changed[1, 1] = np.nextafter(changed[1, 1], np.float32(100))
    assert weights_digest(changed) != expected


def test_domain_digest_separates_domains():
    assert domain_digest("tx/v1", b"x") != domain_digest("block-header/v1", b"x")
    assert domain_digest("ab", b"c") != domain_digest("a", b"bc")  # the length prefix
    assert domain_digest("tx/v1", b"x") != digest(b"x")
    for bad in ("", "x" * 256, "é"):
        with pytest.raises((ValueError, UnicodeEncodeError)):
            domain_digest(bad, b"")


# --------------------------------------------------------------------------- metrics


def test_to_micro_is_fixed_precision():
    assert to_micro(0.1234567) == 123457
    assert to_micro(-2.5e-7) == 0  # round half to even
    assert to_micro(1) == 1_000_000
    assert from_micro(to_micro(0.25)) == 0.25
    assert metrics_to_micro({"loss": 0.5, "acc": 1.0}) == {"loss": 500_000, "acc": 1_000_000}
    for bad in (float("nan"), float("inf"), -float("inf"), 1e303):
        with pytest.raises(ValueError):
            to_micro(bad)


# --------------------------------------------------------------------------- exact bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, b"i\x00\x00\x00\x00"),
        (1, b"i\x00\x00\x00\x01\x01"),
        (-1, b"i\x00\x00\x00\x01\xff"),
        (127, b"i\x00\x00\x00\x01\x7f"),
        (128, b"i\x00\x00\x00\x02\x00\x80"),
        (-128, b"i\x00\x00\x00\x01\x80"),
        (-129, b"i\x00\x00\x00\x02\xff\x7f"),
        (None, b"N"),
        (True, b"b\x01"),
        (False, b"b\x00"),
        ("é", b"s\x00\x00\x00\x02\xc3\xa9"),
        (b"\x00\xff", b"y\x00\x00\x00\x02\x00\xff"),
        ([1, "a"], b"l\x00\x00\x00\x02i\x00\x00\x00\x01\x01s\x00\x00\x00\x01a"),
        (
            {"b": 1, "a": b""},
            b"d\x00\x00\x00\x02s\x00\x00\x00\x01ay\x00\x00\x00\x00"
            b"s\x00\x00\x00\x01bi\x00\x00\x00\x01\x01",
        ),
    ],
)
def test_known_encodings(value, expected):
    assert encode_value(value) == expected
    assert typed(decode_value(expected)) == typed(value)


def test_dict_order_does_not_matter():
    assert encode_value({"b": 1, "a": 2, 3: 4}) == encode_value({3: 4, "a": 2, "b": 1})


def test_pydantic_model_encodes_as_its_field_dict():
    class Point(BaseModel):
        model_config = ConfigDict(frozen=True, extra="forbid")
        x: int
        tag: bytes

    point = Point(x=-3, tag=b"\x01")
    assert encode_model(point) == encode_value({"tag": b"\x01", "x": -3})
    assert encode_value([point]) == encode_value([{"x": -3, "tag": b"\x01"}])


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "value",
    [1.0, [1, 2.5], {"loss": 0.1}, np.float32(1.0), ("ok", {"deep": [float("nan")]})],
)
def test_floats_are_refused_with_a_clear_type_error(value):
    with pytest.raises(TypeError, match="micro-units"):
        encode_value(value)


@pytest.mark.parametrize("value", [{1, 2}, object(), np.int64(3), {(1, 2): 3}, {b"k": 1}])
def test_other_types_are_refused(value):
    with pytest.raises(TypeError):
        encode_value(value)


def test_excessive_nesting_is_refused():
    value: Any = 0
    for _ in range(40):
        value = [value]
    with pytest.raises(ValueError, match="deeper"):
        encode_value(value)


# --------------------------------------------------------------------------- properties


@settings(deadline=None)
@given(values)
def test_decode_inverts_encode(value):
    assert typed(decode_value(encode_value(value))) == typed(value)


@settings(deadline=None)
@given(values, values)
def test_encoding_is_injective(a, b):
    if typed(a) != typed(b):
        assert encode_value(a) != encode_value(b)
    else:
        assert encode_value(a) == encode_value(b)


@settings(deadline=None)
@given(values, st.binary(min_size=1, max_size=4))
def test_encodings_are_self_delimiting(value, extra):
    with pytest.raises(LedgerIntegrityError):
        decode_value(encode_value(value) + extra)


@settings(deadline=None)
@given(st.binary(max_size=64))
def test_decoding_garbage_raises_only_integrity_errors(data):
    try:
        value = decode_value(data)
    except LedgerIntegrityError:
        return
    assert encode_value(value) == data  # whatever decodes is canonical


# --------------------------------------------------------------------------- strict decoding


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"i\x00\x00\x00\x02\x00\x01",  # non-minimal int
        b"i\x00\x00\x00\x01",  # truncated
        b"x",  # unknown tag
        b"b\x02",  # bool neither 0 nor 1
        b"s\x00\x00\x00\x01\xff",  # not UTF-8
        b"N\x00",  # trailing byte
        # unsorted dict keys ("b" before "a")
        b"d\x00\x00\x00\x02s\x00\x00\x00\x01bNs\x00\x00\x00\x01aN",
        # duplicate dict key
        b"d\x00\x00\x00\x02s\x00\x00\x00\x01aNs\x00\x00\x00\x01aN",
        # dict key that is bytes
        b"d\x00\x00\x00\x01y\x00\x00\x00\x00N",
        b"l" + b"\x00\x00\x00\x01l" * 40 + b"\x00\x00\x00\x00",  # too deep
        b"l\xff\xff\xff\xff",  # count larger than the data
    ],
)
def test_non_canonical_bytes_are_rejected(data):
    with pytest.raises(LedgerIntegrityError):
        decode_value(data)


def test_integrity_error_is_a_qfl_error_and_names_its_location():
    err = LedgerIntegrityError("bad", height=3, index=1)
    assert isinstance(err, QflError)
    assert (err.height, err.index) == (3, 1)
    assert str(err) == "block 3, transaction 1: bad"
    assert str(LedgerIntegrityError("bad")) == "bad"
