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
inverts, and `decode_value` accepts *only* canonical bytes (it re-encodes what it parsed
and compares), so one value has exactly one encoding and one encoding one value.

Hashes are SHA3-256. `domain_digest` separates the kinds of hashed object: its input
starts with ``b"qfl\\x00"``, a one-byte domain length and the domain, so no two domains
(nor a Merkle leaf or node, which start with 0x00 / 0x01, see `ledger.merkle`) can share
an input.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, Final

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


def domain_digest(domain: str, data: bytes) -> bytes:
    """SHA3-256 of ``b"qfl\\x00" || len(domain) || domain || data``; domains never collide."""
    tag = domain.encode("ascii")
    if not 0 < len(tag) < 256:
        raise ValueError(f"a hash domain is 1..255 ASCII bytes, got {domain!r}")
    return digest(_DOMAIN_PREFIX + bytes([len(tag)]) + tag + data)


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


def _u32(n: int) -> bytes:
    if n > _U32_MAX:
        raise ValueError(f"length {n} does not fit the canonical encoding (u32)")
    return n.to_bytes(4, "big")


def _int_bytes(n: int) -> bytes:
    if n == 0:
        return b""
    return n.to_bytes((n + (n < 0)).bit_length() // 8 + 1, "big", signed=True)


def _encode(value: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None:
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


def _encode_dict(value: Mapping[Any, Any], out: list[bytes], depth: int) -> None:
    entries = []
    for key, item in value.items():
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise TypeError(f"a canonical dict key is a str or int, got {type(key).__name__}")
        entries.append((encode_value(key), item))
    entries.sort(key=lambda entry: entry[0])
    if any(a[0] == b[0] for a, b in zip(entries, entries[1:], strict=False)):
        raise ValueError("dict has duplicate keys once encoded")
    out += (b"d", _u32(len(entries)))
    for key_bytes, item in entries:
        out.append(key_bytes)
        _encode(item, out, depth + 1)


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


def decode_value(data: bytes) -> Any:
    """Invert `encode_value`; raise `LedgerIntegrityError` on any non-canonical input.

    Lists decode as tuples. Input that parses but is not the canonical encoding of what it
    parses to (unsorted or repeated dict keys, a non-minimal int, trailing bytes) raises.
    """
    reader = _Reader(bytes(data))
    value = _decode(reader, 0)
    if reader.pos != len(reader.data):
        raise LedgerIntegrityError("trailing bytes after canonical encoding")
    if encode_value(value) != reader.data:
        raise LedgerIntegrityError("encoding is not canonical")
    return value
