"""ML-DSA-65 (FIPS 204) signatures behind one backend interface.

Two backends compute the same scheme and accept each other's keys and signatures:

- ``liboqs``: liboqs through liboqs-python (`oqs`), about 10x faster. Used whenever the
  liboqs shared library is installed. The library is located on disk *before* `oqs` is
  imported: importing `oqs` without it makes liboqs-python git-clone and build liboqs,
  which must never happen as a side effect of signing.
- ``cryptography``: pyca/cryptography >= 47 (`MLDSA65PrivateKey`), always available.

``"auto"`` picks liboqs when it can be loaded and cryptography otherwise.

Keys are 32-byte FIPS 204 seeds (see `ledger.keys` for their derivation), so a seed gives
the same key pair under both backends. Every signature is bound to a FIPS 204 context
string (`CTX_UPDATE`, `CTX_BLOCK`, ...): a signature made under one context does not
verify under another.

Signatures are hedged (FIPS 204's default, randomized: never assume they repeat) unless a
signer is made with ``deterministic=True``: FIPS 204's deterministic variant (the
per-signature randomness ``rnd`` is 32 zero bytes), so a key, message and context always
give the same signature, which makes ledgers byte-for-byte reproducible. Only liboqs can
sign so: liboqs draws ``rnd`` from its replaceable randombytes source, which is handed
zeros for that one draw; cryptography (48) signs hedged only (its OpenSSL's
deterministic option is not exposed), so it refuses ``deterministic=True``. Both variants
verify alike everywhere.

A failed check raises `SignatureError`; `verify` never returns a bool.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import hashlib
import logging
import os
import platform
import sys
import threading
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Final, Literal

from qfl.errors import QflError

ALGORITHM: Final = "ML-DSA-65"
SEED_BYTES: Final = 32
PUBLIC_KEY_BYTES: Final = 1952
SIGNATURE_BYTES: Final = 3309
MAX_CONTEXT_BYTES: Final = 255

# FIPS 204 context strings: one per kind of signed object, versioned.
CTX_UPDATE: Final = b"qfl/update/v1"
CTX_BLOCK: Final = b"qfl/block/v1"
CTX_BEACON: Final = b"qfl/beacon/v1"
CTX_GENESIS: Final = b"qfl/genesis/v1"

BackendName = Literal["auto", "liboqs", "cryptography"]
BACKENDS: Final = ("liboqs", "cryptography")

BUILD_HINT: Final = (
    "build it with ../shared/tools/build-liboqs.sh [PREFIX] from a checkout (it installs into "
    '~/_oqs; for another PREFIX set OQS_INSTALL_PATH=PREFIX) and `pip install -e ".[oqs]"`; '
    'or, with internet access, `pip install -e ".[oqs]"` then `python -c "import oqs"` '
    "lets liboqs-python download and build liboqs into ~/_oqs"
)

_log = logging.getLogger(__name__)


class SignatureError(QflError):
    """A signature does not verify (or the key or signature is malformed)."""


class BackendUnavailable(QflError):
    """The requested signature backend cannot be used here; the message says how to get it."""


# --------------------------------------------------------------------------- arguments


def _check_seed(seed: bytes) -> None:
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise ValueError(f"an {ALGORITHM} seed is {SEED_BYTES} bytes")


def _check_context(context: bytes) -> None:
    if not isinstance(context, bytes) or len(context) > MAX_CONTEXT_BYTES:
        raise ValueError(f"a FIPS 204 context is bytes of length <= {MAX_CONTEXT_BYTES}")


# --------------------------------------------------------------------------- finding liboqs


def _library_filename() -> str:
    return "liboqs.dylib" if platform.system() == "Darwin" else "liboqs.so"


def _install_prefixes() -> list[Path]:
    """$OQS_INSTALL_PATH (if set), then ~/_oqs: where build-liboqs.sh installs."""
    prefixes = []
    if env := os.environ.get("OQS_INSTALL_PATH"):
        prefixes.append(Path(env))
    prefixes.append(Path.home() / "_oqs")
    return prefixes


@functools.cache
def _system_liboqs() -> str | None:
    """liboqs on the system library path (a soname such as 'liboqs.so.9'); runs ldconfig once."""
    return ctypes.util.find_library("oqs")


def liboqs_library() -> Path | None:
    """Where the liboqs shared library is, without importing `oqs`; None when absent.

    Looks where liboqs-python does, in its order: the system library path first (then the
    result is a soname the dynamic loader resolves), then lib/ and lib64/ under
    $OQS_INSTALL_PATH and under ~/_oqs.
    """
    if system := _system_liboqs():
        return Path(system)
    for prefix in _install_prefixes():
        for libdir in ("lib", "lib64"):
            candidate = prefix / libdir / _library_filename()
            if candidate.is_file():
                return candidate
    return None


# --------------------------------------------------------------------------- loading oqs

_OQS_LOCK = threading.Lock()
_oqs: ModuleType | None = None


class _DropInfo(logging.Filter):
    """liboqs-python logs a line to stdout on import; keep warnings and errors only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def _oqs_import_env(library: Path) -> Iterator[None]:
    """Point liboqs-python at `library` for the import (it reads $OQS_INSTALL_PATH then)."""
    saved = os.environ.get("OQS_INSTALL_PATH")
    if library.is_absolute():
        os.environ["OQS_INSTALL_PATH"] = str(library.parent.parent)
    oqs_logger = logging.getLogger("oqs.oqs")
    quiet = _DropInfo()
    oqs_logger.addFilter(quiet)
    try:
        yield
    finally:
        oqs_logger.removeFilter(quiet)
        if saved is None:
            os.environ.pop("OQS_INSTALL_PATH", None)
        else:
            os.environ["OQS_INSTALL_PATH"] = saved


def _import_oqs() -> ModuleType:
    library = liboqs_library()
    if library is None:
        raise BackendUnavailable(
            f"liboqs backend: the liboqs shared library is not installed; {BUILD_HINT}"
        )
    try:  # a library that fails to load would send liboqs-python to download and build one
        ctypes.CDLL(str(library))
    except OSError as exc:
        raise BackendUnavailable(
            f"liboqs backend: {library} exists but cannot be loaded ({exc}); {BUILD_HINT}"
        ) from exc
    try:
        with _oqs_import_env(library):
            import oqs
    except ImportError as exc:
        raise BackendUnavailable(
            f"liboqs backend: liboqs is at {library} but liboqs-python is not installed; "
            'run `pip install -e ".[oqs]"` (or `pip install liboqs-python==0.16.0.1`)'
        ) from exc
    except (RuntimeError, OSError, SystemExit) as exc:  # SystemExit: oqs's own failure mode
        raise BackendUnavailable(f"liboqs backend: importing oqs failed ({exc})") from exc
    if ALGORITHM not in oqs.get_enabled_sig_mechanisms():
        raise BackendUnavailable(f"liboqs backend: {library} was built without {ALGORITHM}")
    return oqs


def _load_oqs() -> ModuleType:
    """The `oqs` module, imported once and only when liboqs is installed."""
    global _oqs
    with _OQS_LOCK:
        if _oqs is None:  # reuse an oqs someone imported already: its library is loaded
            _oqs = sys.modules.get("oqs") or _import_oqs()
        return _oqs


def _cryptography_mldsa() -> ModuleType:
    try:
        from cryptography.hazmat.backends.openssl.backend import backend
        from cryptography.hazmat.primitives.asymmetric import mldsa
    except ImportError as exc:
        raise BackendUnavailable(
            f"cryptography backend: {ALGORITHM} needs cryptography >= 47 ({exc})"
        ) from exc
    if not backend.mldsa_supported():
        raise BackendUnavailable(
            f"cryptography backend: this cryptography build has no {ALGORITHM} support"
        )
    return mldsa


def resolve_backend(name: str = "auto") -> str:
    """The backend `name` stands for: "liboqs" or "cryptography".

    "auto" is liboqs when its library is installed and loads, else cryptography.
    Raises BackendUnavailable for a named backend that cannot be used (or an unknown name).
    """
    if name == "auto":
        try:
            _load_oqs()
        except BackendUnavailable as exc:
            _log.debug("auto backend falls back to cryptography: %s", exc)
            name = "cryptography"
        else:
            return "liboqs"
    if name == "liboqs":
        _load_oqs()
    elif name == "cryptography":
        _cryptography_mldsa()
    else:
        raise BackendUnavailable(
            f"unknown signature backend {name!r}; expected auto, liboqs or cryptography"
        )
    return name


# --------------------------------------------------------------------------- signing


class Signer(ABC):
    """An ML-DSA-65 key pair that signs; `public_key` is the 1952-byte FIPS 204 encoding."""

    backend_name: str
    public_key: bytes
    deterministic: bool = False

    @abstractmethod
    def sign(self, message: bytes, context: bytes) -> bytes:
        """A 3309-byte signature of `message` under the FIPS 204 `context` (hedged, or
        FIPS 204's deterministic variant for a `deterministic` signer)."""


class _CryptographySigner(Signer):
    backend_name = "cryptography"

    def __init__(self, seed: bytes, deterministic: bool = False) -> None:
        if deterministic:
            raise BackendUnavailable(
                f"cryptography backend: deterministic {ALGORITHM} signing is not available "
                "(cryptography signs hedged only); use backend='liboqs' for deterministic "
                f"signatures ({BUILD_HINT})"
            )
        self._key = _cryptography_mldsa().MLDSA65PrivateKey.from_seed_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes, context: bytes) -> bytes:
        _check_context(context)
        return self._key.sign(message, context)


# liboqs has no seeded ML-DSA keygen and no deterministic signing call. Its keygen draws
# exactly the 32-byte FIPS 204 seed xi from OQS_randombytes, its signing exactly the 32-byte
# rnd, and liboqs lets a caller replace that source (OQS_randombytes_custom_algorithm,
# <oqs/rand.h>). So keygen (and deterministic signing) runs with a source that hands the
# seed (32 zero bytes) to this thread's first 32-byte draw and fresh os.urandom bytes to
# every other draw; a keygen's result is checked against the cryptography public key of
# the same seed, and a deterministic signature against FIPS 204 in the tests.
_RANDOMBYTES = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint8), ctypes.c_size_t)
_KEYGEN_LOCK = threading.Lock()
_ZERO_RND: Final = bytes(32)  # FIPS 204 ML-DSA.Sign's deterministic variant: rnd = {0}^32


class _SeedSource:
    """State of the seeded randombytes source; armed only while `_armed_randombytes` runs."""

    def __init__(self) -> None:
        self.seed: bytes | None = None
        self.thread: int | None = None

    def fill(self, buffer: ctypes._Pointer, length: int) -> None:  # never raises (C callback)
        seed = self.seed
        if seed is not None and length == len(seed) and threading.get_ident() == self.thread:
            self.seed = None
            ctypes.memmove(buffer, seed, length)
        else:
            ctypes.memmove(buffer, os.urandom(length), length)


_SEED_SOURCE = _SeedSource()
_SEED_CALLBACK = _RANDOMBYTES(_SEED_SOURCE.fill)  # module-lived: C may still hold the pointer


_installed: list[ModuleType] = []  # the oqs whose randombytes source is _SEED_CALLBACK


@contextmanager
def _armed_randombytes(oqs: ModuleType, value: bytes) -> Iterator[Callable[[], bool]]:
    """Run the body with liboqs' next 32-byte draw on this thread answered by `value`.

    Yields a function telling whether that draw happened. The callback source is installed
    once per process and then stays: unarmed (and on any other thread) it answers with
    os.urandom, the system CSPRNG liboqs' own "system" source reads too.
    """
    with _KEYGEN_LOCK:
        if not _installed:
            oqs.native().OQS_randombytes_custom_algorithm(_SEED_CALLBACK)
            _installed.append(oqs)
        _SEED_SOURCE.seed, _SEED_SOURCE.thread = value, threading.get_ident()
        try:
            yield lambda: _SEED_SOURCE.seed is None
        finally:
            _SEED_SOURCE.seed, _SEED_SOURCE.thread = None, None


def _liboqs_keypair(oqs: ModuleType, seed: bytes) -> tuple[bytes, bytes]:
    """(public key, 4032-byte expanded secret key) of FIPS 204 ML-DSA.KeyGen_internal(seed)."""
    sig = oqs.Signature(ALGORITHM)
    try:
        with _armed_randombytes(oqs, seed) as consumed_seed:
            public_key = sig.generate_keypair()
            secret_key = sig.export_secret_key()
            consumed = consumed_seed()
    finally:
        sig.free()
    if not consumed or public_key != _expected_public_key(seed, public_key):
        raise BackendUnavailable(
            f"liboqs backend: this liboqs does not derive {ALGORITHM} keys from the seed as "
            "FIPS 204 does; use backend='cryptography'"
        )
    return public_key, secret_key


def _expected_public_key(seed: bytes, fallback: bytes) -> bytes:
    """cryptography's public key for `seed`; `fallback` when cryptography lacks ML-DSA."""
    try:
        mldsa = _cryptography_mldsa()
    except BackendUnavailable:
        return fallback
    return mldsa.MLDSA65PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()


class _LiboqsSigner(Signer):
    backend_name = "liboqs"

    def __init__(self, seed: bytes, deterministic: bool = False) -> None:
        self._oqs = _load_oqs()
        self.public_key, secret_key = _liboqs_keypair(self._oqs, seed)
        self._sig = self._oqs.Signature(ALGORITHM, secret_key=secret_key)
        self.deterministic = deterministic
        weakref.finalize(self, self._sig.free)  # wipes the secret key

    def sign(self, message: bytes, context: bytes) -> bytes:
        _check_context(context)
        if not self.deterministic:
            return self._sig.sign_with_ctx_str(message, context)
        with _armed_randombytes(self._oqs, _ZERO_RND) as consumed_rnd:
            signature = self._sig.sign_with_ctx_str(message, context)
            if not consumed_rnd():  # pragma: no cover - a liboqs that draws rnd otherwise
                raise BackendUnavailable(
                    f"liboqs backend: this liboqs does not draw the {ALGORITHM} signing "
                    "randomness as FIPS 204 does; deterministic signing is unavailable"
                )
        return signature


def signer_from_seed(seed: bytes, *, backend: str = "auto", deterministic: bool = False) -> Signer:
    """The signer of the key pair FIPS 204 derives from a 32-byte `seed` (same under all backends).

    With `deterministic`, it signs with FIPS 204's deterministic variant (liboqs only; the
    cryptography backend raises `BackendUnavailable`). Signers are not picklable: send the
    seed (or what derives it) to where signing happens.
    """
    _check_seed(seed)
    if resolve_backend(backend) == "liboqs":
        return _LiboqsSigner(seed, deterministic)
    return _CryptographySigner(seed, deterministic)


# --------------------------------------------------------------------------- verifying

_Check = Callable[[bytes, bytes, bytes, bytes], bool]  # (public key, message, sig, ctx)


@functools.lru_cache(maxsize=4096)
def _cryptography_public_key(public_key: bytes) -> object:
    return _cryptography_mldsa().MLDSA65PublicKey.from_public_bytes(public_key)


def _cryptography_check(public_key: bytes, message: bytes, signature: bytes, ctx: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        _cryptography_public_key(public_key).verify(signature, message, ctx)
    except InvalidSignature:
        return False
    return True


def _liboqs_check(oqs: ModuleType) -> _Check:
    """liboqs' ML-DSA-65 verification, called directly (no argument copies) when it can be.

    liboqs-python's ``verify_with_ctx_str`` copies the message, signature, context and key
    into fresh ctypes buffers on every call; ``OQS_SIG_ml_dsa_65_verify_with_ctx_str``
    (liboqs' public C API, <oqs/sig_ml_dsa.h>) reads them in place. It is bound on a
    handle of our own to the library `oqs` loaded, so liboqs-python's bindings are left
    untouched; where it cannot be bound, liboqs-python's call is used.
    """
    verify = _liboqs_direct_verify()
    if verify is not None:

        def check_direct(public_key: bytes, message: bytes, signature: bytes, ctx: bytes) -> bool:
            status = verify(
                message, len(message), signature, len(signature), ctx, len(ctx), public_key
            )
            return status == 0  # OQS_SUCCESS

        return check_direct
    sig = oqs.Signature(ALGORITHM)  # stateless for verification: one per verifier suffices

    def check(public_key: bytes, message: bytes, signature: bytes, ctx: bytes) -> bool:
        return sig.verify_with_ctx_str(message, signature, ctx, public_key)

    return check


@functools.cache
def _liboqs_direct_verify() -> Callable[..., int] | None:
    library = liboqs_library()
    if library is None:  # pragma: no cover - _load_oqs found it
        return None
    try:
        function = ctypes.CDLL(str(library)).OQS_SIG_ml_dsa_65_verify_with_ctx_str
    except (OSError, AttributeError) as exc:
        _log.debug("liboqs: no direct ML-DSA-65 verify (%s); using liboqs-python's", exc)
        return None
    function.argtypes = [
        ctypes.c_char_p,  # message
        ctypes.c_size_t,
        ctypes.c_char_p,  # signature
        ctypes.c_size_t,
        ctypes.c_char_p,  # context
        ctypes.c_size_t,
        ctypes.c_char_p,  # public key (PUBLIC_KEY_BYTES, checked by the caller)
    ]
    function.restype = ctypes.c_int
    return function


class Verifier:
    """Verifies ML-DSA-65 signatures in bulk with one backend, resolved once.

    Parsed public keys (cryptography) and the liboqs handle are reused across calls.
    With `cache_size > 0` it remembers the last `cache_size` signatures that VERIFIED
    (keyed by a SHA-256 of key, context, message and signature; ML-DSA verification
    is deterministic, so a repeat gives the same answer): co-located validators that
    re-check the same update then pay for one verification. Failures are not cached.
    """

    def __init__(self, backend: str = "auto", *, cache_size: int = 0) -> None:
        self.backend_name = resolve_backend(backend)
        if self.backend_name == "liboqs":
            self._check = _liboqs_check(_load_oqs())
        else:
            self._check = _cryptography_check
        self._cache_size = cache_size
        self._verified: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def verify(self, public_key: bytes, message: bytes, signature: bytes, context: bytes) -> None:
        """Return None if `signature` is valid for (`message`, `context`); else SignatureError."""
        _check_context(context)
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise SignatureError(
                f"{ALGORITHM} public key has {len(public_key)} bytes, not {PUBLIC_KEY_BYTES}"
            )
        if len(signature) != SIGNATURE_BYTES:
            raise SignatureError(
                f"{ALGORITHM} signature has {len(signature)} bytes, not {SIGNATURE_BYTES}"
            )
        key = None
        if self._cache_size:
            key = _cache_key(public_key, message, signature, context)
            with self._lock:  # threads may verify at once (`Contract.admit(workers=...)`)
                if key in self._verified:
                    self._verified.move_to_end(key)
                    return
        if type(public_key) is not bytes:  # the checks take bytes (liboqs reads them in place)
            public_key = bytes(public_key)
        if type(message) is not bytes:
            message = bytes(message)
        if type(signature) is not bytes:
            signature = bytes(signature)
        if not self._check(public_key, message, signature, context):
            raise SignatureError(f"{ALGORITHM} signature does not verify under context {context!r}")
        if key is not None:
            with self._lock:
                self._verified[key] = None
                if len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)


def _cache_key(public_key: bytes, message: bytes, signature: bytes, context: bytes) -> bytes:
    # SHA-256, not the ledger's SHA3-256: this key never leaves the process, and with
    # the CPU's SHA extensions it costs a quarter as much over the ~5 KB of each call
    h = hashlib.sha256()
    for part in (public_key, context, message, signature):
        h.update(len(part).to_bytes(4, "big"))
        h.update(part)
    return h.digest()


@functools.cache
def _verifier(backend: str) -> Verifier:
    return Verifier(backend)  # "auto" is resolved once per process, on first use


def verify(
    public_key: bytes,
    message: bytes,
    signature: bytes,
    context: bytes,
    *,
    backend: str = "auto",
) -> None:
    """Return None if `signature` is valid; raise SignatureError otherwise.

    Keeps one `Verifier` per backend name, so it is cheap to call in bulk.
    """
    _verifier(backend).verify(public_key, message, signature, context)


__all__ = [
    "ALGORITHM",
    "BACKENDS",
    "BUILD_HINT",
    "CTX_BEACON",
    "CTX_BLOCK",
    "CTX_GENESIS",
    "CTX_UPDATE",
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "BackendName",
    "BackendUnavailable",
    "SignatureError",
    "Signer",
    "Verifier",
    "liboqs_library",
    "resolve_backend",
    "signer_from_seed",
    "verify",
]
