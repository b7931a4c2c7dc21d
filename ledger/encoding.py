"""Canonical bytes for ledger records, and the hashes taken over them.

Every record is hashed over one byte string that any machine derives the same way, so
the encoding has no choices in it: no floats, no whitespace, no key order, no optional
padding. It is a length-prefixed, type-tagged binary format (all lengths and counts are
4-byte unsigned big-endian, ``u32``)::

    value := 'N'                                 None
           | 'b' 0x00|0x01                       bool
           | 'i' u32(n) two's-complement(n)      int, big-endian, minimal n (0 -> n = 0)
           | 's' u32(n) utf8(n)                  str
           | 'y' u32(n) raw(n)                   bytes
           | 'l' u32(count) value*               list or tuple (decoded as a tuple)
           | 'd' u32(count) (key value)*         dict, keys str or int, entries sorted
                                                 by the encoded key bytes, no duplicates

A pydantic model is encoded as the dict of its fields (`model_dump(mode="python")`).
Floats are refused with a `TypeError`: a metric goes in as micro-units (`to_micro`), an
array is hashed as raw little-endian float32 bytes (`weights_digest`).

The encoding is injective: every value has a self-delimiting encoding that `decode_value`
inverts, and `decode_value` accepts *only* canonical bytes (by definition: it accepts what
re-encoding the parsed value reproduces; see `_decode_reference`, which the faster paths
below must agree with and fall back to), so one value has exactly one encoding and one
encoding one value.

Hashes are SHA3-256. `domain_digest` separates the kinds of hashed object: its input
starts with ``b"qfl\\x00"``, a one-byte domain length and the domain, so no two domains
(nor a Merkle leaf or node, which start with 0x00 / 0x01, see `ledger.merkle`) can share
an input.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
from pydantic import BaseModel

from qfl.errors import QflError

HASH_BYTES: Final = 32
MICRO: Final = 1_000_000
MAX_DEPTH: Final = 32
_U32_MAX: Final = 2**32 - 1
_DOMAIN_PREFIX: Final = b"qfl\x00"

# Hash domains (one per kind of hashed object), see `domain_digest`.
DOMAIN_TX: Final = "tx/v1"
DOMAIN_BLOCK_HEADER: Final = "block-header/v1"
DOMAIN_UPDATE_SIGNING: Final = "update-signing/v1"


class LedgerIntegrityError(QflError):
    """Ledger data fails a check: malformed bytes, a broken hash link, a bad block.

    `height` and `index` name the first bad block and transaction when known.
    (Defined here, the lowest ledger module, and re-exported by `ledger.store`.)
    """

    def __init__(self, message: str, *, height: int | None = None, index: int | None = None):
        where = []
        if height is not None:
            where.append(f"block {height}")
        if index is not None:
            where.append(f"transaction {index}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.height = height
        self.index = index


# --------------------------------------------------------------------------- hashing


def digest(data: bytes) -> bytes:
    """SHA3-256 of `data` (32 bytes)."""
    return hashlib.sha3_256(data).digest()


def domain_digest_prefix(domain: str) -> bytes:
    """What `domain_digest` hashes before the data: ``b"qfl\\x00" || len(domain) || domain``."""
    tag = domain.encode("ascii")
    if not 0 < len(tag) < 256:
        raise ValueError(f"a hash domain is 1..255 ASCII bytes, got {domain!r}")
    return _DOMAIN_PREFIX + bytes([len(tag)]) + tag


def domain_digest(domain: str, data: bytes) -> bytes:
    """SHA3-256 of ``b"qfl\\x00" || len(domain) || domain || data``; domains never collide."""
    return digest(domain_digest_prefix(domain) + data)


def weights_digest(arr: np.ndarray) -> bytes:
    """SHA3-256 of `arr` as contiguous little-endian float32 bytes (shape is not hashed)."""
    return digest(np.ascontiguousarray(arr, dtype="<f4").tobytes())


def to_micro(x: float) -> int:
    """A finite number as integer micro-units: ``round(x * 1e6)`` (round half to even)."""
    scaled = float(x) * MICRO
    if not math.isfinite(scaled):
        raise ValueError(f"cannot record a non-finite metric: {x!r}")
    return round(scaled)


def from_micro(n: int) -> float:
    """Micro-units back to a float (for display; never re-encode the result)."""
    return n / MICRO


def metrics_to_micro(metrics: Mapping[str, float]) -> dict[str, int]:
    """Every metric value as micro-units (see `to_micro`)."""
    return {str(name): to_micro(value) for name, value in metrics.items()}


# --------------------------------------------------------------------------- encoding
#
# The encoder and decoder sit under every hash and every verification of the ledger, so
# they have fast paths for the exact built-in types (`type(v) is int`, ...) and cache the
# encodings of dict keys; any other value goes through the general `isinstance` chain.
# The decoder checks canonicity while it parses (one pass, nothing re-encoded) and hands
# any input it does not accept to the reference decoder, which is the one that raises.

_pack_u32 = struct.Struct(">I").pack
_unpack_u32 = struct.Struct(">I").unpack_from
_entry_key = operator.itemgetter(0)
_KEY_CACHE_MAX: Final = 4096
_KEY_CACHE_MAX_LEN: Final = 64
_str_keys: dict[str, bytes] = {}  # exact str dict key -> its encoding
_int_keys: dict[int, bytes] = {}  # exact int dict key -> its encoding


def _u32(n: int) -> bytes:
    if n > _U32_MAX:
        raise ValueError(f"length {n} does not fit the canonical encoding (u32)")
    return _pack_u32(n)


def _int_bytes(n: int) -> bytes:
    if n == 0:
        return b""
    return n.to_bytes((n + (n < 0)).bit_length() // 8 + 1, "big", signed=True)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    kind = type(value)  # fast paths for the exact built-in types, same bytes as below
    if kind is bytes:
        out += (b"y", _u32(len(value)), value)
    elif kind is int:
        raw = _int_bytes(value)
        out += (b"i", _pack_u32(len(raw)), raw)
    elif kind is str:
        raw = value.encode("utf-8")
        out += (b"s", _u32(len(raw)), raw)
    elif kind is dict:
        _encode_dict(value, out, depth)
    elif kind is tuple or kind is list:
        out += (b"l", _u32(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif value is None:
        out.append(b"N")
    elif isinstance(value, bool):
        out.append(b"b\x01" if value else b"b\x00")
    elif isinstance(value, int):
        raw = _int_bytes(int(value))
        out += (b"i", _u32(len(raw)), raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += (b"s", _u32(len(raw)), raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out += (b"y", _u32(len(raw)), raw)
    elif isinstance(value, BaseModel):
        _encode(value.model_dump(mode="python"), out, depth)
    elif isinstance(value, Mapping):
        _encode_dict(value, out, depth)
    elif isinstance(value, list | tuple):
        out += (b"l", _u32(len(value)))
        for item in value:
            _encode(item, out, depth + 1)
    elif isinstance(value, float | np.floating):
        raise TypeError(
            f"float {value!r} has no canonical encoding: use integer micro-units "
            "(ledger.encoding.to_micro) or hash arrays with weights_digest"
        )
    else:
        raise TypeError(f"{type(value).__name__} has no canonical encoding")


def _key_bytes(key: Any) -> tuple[bytes, bool]:
    """(encoding of dict key `key`, whether it is an exact str or int)."""
    kind = type(key)
    if kind is str:
        encoded = _str_keys.get(key)
        if encoded is None:
            raw = key.encode("utf-8")
            encoded = b"s" + _u32(len(raw)) + raw
            if len(raw) <= _KEY_CACHE_MAX_LEN and len(_str_keys) < _KEY_CACHE_MAX:
                _str_keys[key] = encoded
        return encoded, True
    if kind is int:
        encoded = _int_keys.get(key)
        if encoded is None:
            raw = _int_bytes(key)
            encoded = b"i" + _pack_u32(len(raw)) + raw
            if len(_int_keys) < _KEY_CACHE_MAX:
                _int_keys[key] = encoded
        return encoded, True
    if isinstance(key, bool) or not isinstance(key, str | int):
        raise TypeError(f"a canonical dict key is a str or int, got {type(key).__name__}")
    return encode_value(key), False


def _encode_dict(value: Mapping[Any, Any], out: list[bytes], depth: int) -> None:
    entries = []
    exact = True
    for key, item in value.items():
        key_bytes, exact_key = _key_bytes(key)
        exact = exact and exact_key
        entries.append((key_bytes, item))
    entries.sort(key=_entry_key)
    # distinct exact str / int keys always encode distinctly; subclasses might not
    if not exact and any(a[0] == b[0] for a, b in zip(entries, entries[1:], strict=False)):
        raise ValueError("dict has duplicate keys once encoded")
    out += (b"d", _u32(len(entries)))
    depth += 1
    for key_bytes, item in entries:
        out.append(key_bytes)
        _encode(item, out, depth)


def encode_value(value: Any) -> bytes:
    """The canonical bytes of `value` (see the module docstring for the format)."""
    out: list[bytes] = []
    _encode(value, out, 0)
    return b"".join(out)


def encode_model(model: BaseModel) -> bytes:
    """The canonical bytes of a pydantic model: the encoding of its field dict."""
    return encode_value(model)


# --------------------------------------------------------------------------- decoding


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise LedgerIntegrityError("canonical encoding is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")


def _decode(reader: _Reader, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise LedgerIntegrityError(f"canonical encoding nested deeper than {MAX_DEPTH} levels")
    tag = reader.take(1)
    if tag == b"N":
        return None
    if tag == b"b":
        flag = reader.take(1)
        if flag not in (b"\x00", b"\x01"):
            raise LedgerIntegrityError("canonical bool is neither 0 nor 1")
        return flag == b"\x01"
    if tag == b"i":
        return int.from_bytes(reader.take(reader.u32()), "big", signed=True)
    if tag == b"s":
        try:
            return reader.take(reader.u32()).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LedgerIntegrityError("canonical string is not UTF-8") from exc
    if tag == b"y":
        return reader.take(reader.u32())
    if tag == b"l":
        return tuple(_decode(reader, depth + 1) for _ in range(reader.u32()))
    if tag == b"d":
        count = reader.u32()
        result = {}
        for _ in range(count):
            key = _decode(reader, depth + 1)
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise LedgerIntegrityError("canonical dict key is not a str or int")
            result[key] = _decode(reader, depth + 1)
        return result
    raise LedgerIntegrityError(f"unknown type tag {tag!r} in canonical encoding")


def _decode_reference(data: bytes) -> Any:
    """Parse, then re-encode and compare: the definition of `decode_value`, and its errors."""
    reader = _Reader(data)
    value = _decode(reader, 0)
    if reader.pos != len(reader.data):
        raise LedgerIntegrityError("trailing bytes after canonical encoding")
    if encode_value(value) != reader.data:
        raise LedgerIntegrityError("encoding is not canonical")
    return value


class _NotFast(Exception):
    """The fast decoder does not accept the input: the reference decoder decides."""


# Tags as the byte values that indexing a bytes object returns.
_N, _B, _I, _S, _Y, _L, _D = b"Nbisyld"


def _int_canonical_len(value: int) -> int:
    return 0 if value == 0 else (value + (value < 0)).bit_length() // 8 + 1


def _decode_fast(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    """(value, end) of the canonical encoding at `pos`; `_NotFast` (or any error) if not.

    Accepts exactly what `_decode_reference` accepts: every length is in range, ints are
    minimal, strings strict UTF-8 (which re-encodes to the same bytes), bools 0 or 1, and
    each dict key's bytes (themselves canonical) are strictly greater than the previous
    key's, which is the encoder's sort order with no duplicates. Refusing more than that
    is harmless (the reference decides), accepting more never is.
    """
    if depth > MAX_DEPTH:
        raise _NotFast
    tag = data[pos]
    if tag == _Y:
        end = pos + 5 + _unpack_u32(data, pos + 1)[0]
        if end > len(data):
            raise _NotFast
        return data[pos + 5 : end], end
    if tag == _I:
        end = pos + 5 + _unpack_u32(data, pos + 1)[0]
        if end > len(data):
            raise _NotFast
        value = int.from_bytes(data[pos + 5 : end], "big", signed=True)
        if end - pos - 5 != _int_canonical_len(value):
            raise _NotFast
        return value, end
    if tag == _S:
        end = pos + 5 + _unpack_u32(data, pos + 1)[0]
        if end > len(data):
            raise _NotFast
        return data[pos + 5 : end].decode("utf-8"), end
    if tag == _D:
        return _decode_dict_fast(data, pos, depth, None)
    if tag == _L:
        count = _unpack_u32(data, pos + 1)[0]
        pos += 5
        items = []
        depth += 1
        for _ in range(count):
            item, pos = _decode_fast(data, pos, depth)
            items.append(item)
        return tuple(items), pos
    if tag == _N:
        return None, pos + 1
    if tag == _B:
        flag = data[pos + 1]
        if flag > 1:
            raise _NotFast
        return flag == 1, pos + 2
    raise _NotFast


# Shapes: the key sequences of dicts decoded before (records have a handful), keyed by
# (entry count, first key's encoding). A dict whose keys are exactly a known shape's is
# decoded by matching the keys' bytes, whose order and canonicity were checked when the
# shape was first met. Bounded, so odd inputs cannot grow it without limit.
_Shape = tuple[tuple[bytes, str, int], ...]  # (key encoding, key, encoding length) in order
_shapes: dict[tuple[int, bytes], list[_Shape]] = {}
_SHAPES_MAX: Final = 256
_SHAPE_MAX_KEYS: Final = 64
_shape_count = 0


def _decode_dict_fast(
    data: bytes, pos: int, depth: int, marks: list[int] | None
) -> tuple[dict[Any, Any], int]:
    """`_decode_fast` of the dict at `pos`; appends each entry's start to `marks` if given
    (and then the end)."""
    if data[pos] != _D:
        raise _NotFast
    count = _unpack_u32(data, pos + 1)[0]
    pos += 5
    depth += 1
    if count and depth > MAX_DEPTH:
        raise _NotFast
    if count and data[pos] == _S:
        first = data[pos : pos + 5 + _unpack_u32(data, pos + 1)[0]]
        for shape in _shapes.get((count, first), ()):
            decoded = _decode_shaped(data, pos, depth, shape, marks)
            if decoded is not None:
                return decoded
    return _decode_entries(data, pos, depth, count, marks)


def _entry_value(data: bytes, pos: int, depth: int, size: int) -> tuple[Any, int]:
    """A dict entry's value at `pos` (scalars inline, the rest by `_decode_fast`), and its end."""
    tag = data[pos]
    if tag in (_Y, _I, _S):
        end = pos + 5 + _unpack_u32(data, pos + 1)[0]
        if end > size:
            raise _NotFast
        if tag == _Y:
            return data[pos + 5 : end], end
        if tag == _S:
            return data[pos + 5 : end].decode("utf-8"), end
        value = int.from_bytes(data[pos + 5 : end], "big", signed=True)
        if end - pos - 5 != _int_canonical_len(value):
            raise _NotFast
        return value, end
    return _decode_fast(data, pos, depth)


def _decode_shaped(
    data: bytes, pos: int, depth: int, shape: _Shape, marks: list[int] | None
) -> tuple[dict[Any, Any], int] | None:
    """The dict at `pos` (past its count) if its keys are `shape`'s; None if they are not."""
    size = len(data)
    result: dict[Any, Any] = {}
    starts = []
    for encoded_key, key, length in shape:
        if not data.startswith(encoded_key, pos):
            return None
        starts.append(pos)
        pos += length
        result[key], pos = _entry_value(data, pos, depth, size)
    if marks is not None:
        marks += starts
        marks.append(pos)
    return result, pos


def _decode_entries(
    data: bytes, pos: int, depth: int, count: int, marks: list[int] | None
) -> tuple[dict[Any, Any], int]:
    """The dict at `pos` (past its count) entry by entry; learns its shape."""
    global _shape_count
    size = len(data)
    result: dict[Any, Any] = {}
    previous = b""  # every key encoding is non-empty, so the first key is greater
    shape: list[tuple[bytes, str, int]] | None = [] if count <= _SHAPE_MAX_KEYS else None
    for _ in range(count):
        if marks is not None:
            marks.append(pos)
        start = pos
        if data[pos] == _S:
            pos += 5 + _unpack_u32(data, pos + 1)[0]
            if pos > size:
                raise _NotFast
            key: Any = data[start + 5 : pos].decode("utf-8")
        else:
            key, pos = _decode_fast(data, pos, depth)
            if type(key) is not int:
                raise _NotFast
        encoded_key = data[start:pos]
        if encoded_key <= previous:
            raise _NotFast
        previous = encoded_key
        if shape is not None:
            if type(key) is str:
                shape.append((encoded_key, key, pos - start))
            else:
                shape = None
        result[key], pos = _entry_value(data, pos, depth, size)
    if marks is not None:
        marks.append(pos)
    if shape and _shape_count < _SHAPES_MAX:
        known = _shapes.setdefault((count, shape[0][0]), [])
        learned = tuple(shape)
        if learned not in known:
            known.append(learned)
            _shape_count += 1
    return result, pos


def same_encoding(value: Any, decoded: Any) -> bool:
    """Whether ``encode_value(value) == encode_value(decoded)``, for `decoded` from `decode_value`.

    Compares structurally (no bytes built) where both sides have the same exact built-in
    types; anything else is settled by encoding both. Raises what `encode_value(value)`
    raises for a value without an encoding.
    """
    if value is decoded:
        return True
    kind = type(decoded)
    if type(value) is not kind:
        return encode_value(value) == encode_value(decoded)
    if kind is dict:
        if len(value) != len(decoded):
            return False
        for key, item in value.items():
            key_type = type(key)  # decoded keys are exact str / int, so `get` is exact too
            if key_type is not str and key_type is not int:
                return encode_value(value) == encode_value(decoded)
            other = decoded.get(key, _MISSING)
            if item is other:
                continue
            other_type = type(other)
            if type(item) is other_type and other_type in _SCALARS:
                if item != other:
                    return False
            elif other is _MISSING or not same_encoding(item, other):
                return False
        return True
    if kind is tuple:
        if len(value) != len(decoded):
            return False
        for item, other in zip(value, decoded, strict=True):
            if item is other:
                continue
            other_type = type(other)
            if type(item) is other_type and other_type in _SCALARS:
                if item != other:
                    return False
            elif not same_encoding(item, other):
                return False
        return True
    return value == decoded  # one exact type of None, bool, int, str, bytes: == is exact


_SCALARS: Final = frozenset({int, str, bytes, bool, type(None)})
_MISSING: Final = object()


# Templates: a value's encoding with its structure fixed and only its leaves' bytes free.
# Learned from an encoding the decoder accepted (once encodings of that length and those
# first bytes came by a few times), a template is a regular expression of the encoding's
# structure bytes (tags, lengths, dict keys, bools, None, short strings) with one group
# per remaining leaf: bytes of the exact length, an int of the exact length whose first
# two bytes make it minimal, a string of the exact length. An input the expression
# matches in full is therefore canonical exactly when its string leaves are UTF-8 (the
# builder decodes them, and anything it raises sends the input to the decoders above),
# and the compiled builder makes its value, and its entry offsets when it is a dict,
# from the groups. Bounded in number, so odd inputs cannot grow them without limit.


class _Template(NamedTuple):
    fullmatch: Callable[[bytes], re.Match[bytes] | None]
    build: Callable[[tuple[bytes, ...]], Any]
    entries: tuple[int, ...] | None  # a dict's entry offsets (see decode_with_entries)


_TemplateKey = tuple[int, bytes]  # (encoding length, its first bytes)
_templates: dict[_TemplateKey, list[_Template]] = {}
_template_sightings: dict[_TemplateKey, int] = {}
_TEMPLATE_PREFIX: Final = 16
_TEMPLATE_MIN_BYTES: Final = 64
_TEMPLATES_MAX: Final = 128
_TEMPLATES_PER_KEY: Final = 8
_TEMPLATE_MAX_GROUPS: Final = 128
_TEMPLATE_MAX_LEAVES: Final = 512
_TEMPLATE_LITERAL_STR: Final = 16  # strings up to this many bytes are structure (names)
_TEMPLATE_SIGHTINGS: Final = 3  # canonical encodings of one key seen before learning
_SIGHTINGS_MAX: Final = 4096
_template_count = 0


def _int_pattern(n: int) -> bytes:
    """A regex of the n-byte minimal two's-complement ints (n >= 1), see `_int_bytes`."""
    if n == 1:
        return rb"[\x01-\xff]"  # 0 is encoded with no bytes
    head = rb"(?:[\x01-\xfe].|\x00[\x80-\xff]|\xff[\x00-\x7f])"
    return head if n == 2 else head + b".{%d}" % (n - 2)


def _compile_template(data: bytes) -> _Template | None:
    """The template of canonical `data`; None when it is too complex to be worth one."""
    pattern: list[bytes] = []
    consts: list[Any] = []
    groups = 0
    leaves = 0
    entries: list[int] | None = None

    def const(value: Any) -> str:
        consts.append(value)
        return f"C[{len(consts) - 1}]"

    def capture(regex: bytes) -> int:
        nonlocal groups
        pattern.append(b"(" + regex + b")")
        groups += 1
        return groups - 1

    def walk(pos: int, depth: int) -> tuple[str, int]:
        nonlocal leaves, entries
        leaves += 1
        if leaves > _TEMPLATE_MAX_LEAVES or groups > _TEMPLATE_MAX_GROUPS:
            raise _NotFast  # not worth a template
        tag = data[pos]
        if tag in (_N, _B):
            end = pos + (1 if tag == _N else 2)
            pattern.append(re.escape(data[pos:end]))
            return ("None" if tag == _N else "True" if data[pos + 1] else "False"), end
        n = _unpack_u32(data, pos + 1)[0]
        start, end = pos + 5, pos + 5 + n
        if tag == _S and n <= _TEMPLATE_LITERAL_STR:
            pattern.append(re.escape(data[pos:end]))
            return const(sys.intern(data[start:end].decode("utf-8"))), end
        pattern.append(re.escape(data[pos:start]))
        if tag == _I:
            return (f"F(g[{capture(_int_pattern(n))}], 'big', signed=True)" if n else "0"), end
        if tag == _S:
            return f"g[{capture(b'.{%d}' % n)}].decode('utf-8')", end
        if tag == _Y:
            return (f"g[{capture(b'.{%d}' % n)}]" if n else "b''"), end
        items = []
        pos = start
        if tag == _L:
            for _ in range(n):
                item, pos = walk(pos, depth + 1)
                items.append(item + ", ")
            return "(" + "".join(items) + ")", pos
        if depth == 0:
            entries = []
        for _ in range(n):  # tag == _D
            if depth == 0:
                entries.append(pos)
            key, end = _decode_fast(data, pos, depth + 1)
            pattern.append(re.escape(data[pos:end]))
            item, pos = walk(end, depth + 1)
            items.append(f"{const(key)}: {item}")
        if depth == 0:
            entries.append(pos)
        return "{" + ", ".join(items) + "}", pos

    try:
        expression, end = walk(0, 0)
    except _NotFast:
        return None
    if end != len(data) or groups > _TEMPLATE_MAX_GROUPS:
        return None
    namespace: dict[str, Any] = {"C": consts, "F": int.from_bytes}
    exec(f"def build(g):\n    return {expression}\n", namespace)  # noqa: S102 - our own source
    template = _Template(
        fullmatch=re.compile(b"".join(pattern), re.DOTALL).fullmatch,
        build=namespace["build"],
        entries=None if entries is None else tuple(entries),
    )
    match = template.fullmatch(data)  # the template must reproduce what it was learned from
    if match is None or encode_value(template.build(match.groups())) != data:
        return None  # pragma: no cover - defensive
    return template


def _learn_template(key: _TemplateKey, data: bytes) -> None:
    """Count a sighting of `key` (canonical `data` no template matched); learn when frequent."""
    global _template_count
    sightings = _template_sightings.get(key, 0) + 1
    if sightings < _TEMPLATE_SIGHTINGS:
        if len(_template_sightings) >= _SIGHTINGS_MAX:
            _template_sightings.clear()  # only counters: start counting afresh
        _template_sightings[key] = sightings
        return
    known = _templates.get(key, [])
    if _template_count >= _TEMPLATES_MAX or len(known) >= _TEMPLATES_PER_KEY:
        return
    try:
        template = _compile_template(data)
    except (re.error, RecursionError, SyntaxError, MemoryError):  # pragma: no cover
        template = None
    if template is None:  # not worth one: never try this key again (until counters reset)
        _template_sightings[key] = -_SIGHTINGS_MAX
        return
    _template_sightings[key] = 0
    _templates[key] = [*known, template]
    _template_count += 1


def _decode_top(data: bytes, want_entries: bool) -> tuple[Any, Sequence[int] | None]:
    """(value, entry offsets or None) of canonical `data`; raise `LedgerIntegrityError` if not.

    Tries the templates, then the fast decoder, then the reference decoder, which is the
    one that raises (and the one that decides whatever the fast ones do not accept).
    """
    size = len(data)
    key = (size, data[:_TEMPLATE_PREFIX])
    for template in _templates.get(key, ()):
        match = template.fullmatch(data)
        if match is not None:
            try:
                return template.build(match.groups()), template.entries
            except Exception:  # e.g. a string leaf that is not UTF-8
                break
    marks: list[int] | None = [] if want_entries else None
    try:
        if data[0] == _D:
            value, end = _decode_dict_fast(data, 0, 0, marks)
        else:
            value, end = _decode_fast(data, 0, 0)
            marks = None
    except Exception:
        end = -1
    if end != size:
        value = _decode_reference(data)  # raises, or decides what the fast path refused
        marks = _measure_entries(value) if want_entries else None
    if size >= _TEMPLATE_MIN_BYTES:
        _learn_template(key, data)
    return value, marks


def _measure_entries(value: Any) -> list[int] | None:
    """The entry offsets of canonical `value`'s encoding (None unless it is a dict)."""
    if not isinstance(value, dict):
        return None
    marks = [5]
    for key_bytes, item in sorted(
        ((_key_bytes(k)[0], v) for k, v in value.items()), key=_entry_key
    ):
        marks.append(marks[-1] + len(key_bytes) + len(encode_value(item)))
    return marks


def decode_with_entries(data: bytes) -> tuple[Any, Sequence[int] | None]:
    """`decode_value(data)`, and where each entry starts when the value is a dict.

    Returns (value, offsets): for a dict, entry k of the encoding (key then value, in the
    canonical key order) is ``data[offsets[k]:offsets[k + 1]]`` and the last offset is
    ``len(data)``; offsets is None for any other value. Raises as `decode_value` does.
    """
    return _decode_top(bytes(data), True)


def decode_value(data: bytes) -> Any:
    """Invert `encode_value`; raise `LedgerIntegrityError` on any non-canonical input.

    Lists decode as tuples. Input that parses but is not the canonical encoding of what it
    parses to (unsorted or repeated dict keys, a non-minimal int, trailing bytes) raises.
    """
    return _decode_top(bytes(data), False)[0]
