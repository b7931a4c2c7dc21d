"""Tests for ledger.crypto: ML-DSA-65 under every available backend, cross-checked.

dilithium-py (a pure-Python FIPS 204 implementation, test-only) is the independent
third implementation every backend's keys and signatures are checked against.
"""

from __future__ import annotations

import ctypes.util
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import crypto
from ledger.crypto import (
    CTX_BEACON,
    CTX_BLOCK,
    CTX_GENESIS,
    CTX_UPDATE,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    BackendUnavailable,
    SignatureError,
    Signer,
    Verifier,
    liboqs_library,
    resolve_backend,
    signer_from_seed,
    verify,
)
from qfl.errors import QflError

REPO = Path(__file__).resolve().parents[2]

LIBOQS_SKIP = "liboqs not built: run ../shared/tools/build-liboqs.sh"
HAVE_LIBOQS = liboqs_library() is not None
HAVE_OQS_PY = importlib.util.find_spec("oqs") is not None  # find_spec does not import oqs
needs_liboqs = [
    pytest.mark.skipif(not HAVE_LIBOQS, reason=LIBOQS_SKIP),
    pytest.mark.skipif(
        HAVE_LIBOQS and not HAVE_OQS_PY,
        reason='liboqs-python not installed: pip install -e ".[oqs]"',
    ),
]
BACKENDS = ["cryptography", pytest.param("liboqs", marks=needs_liboqs)]


def requires_liboqs(test):
    """Skip `test` (with the reason) unless liboqs and liboqs-python are installed."""
    for mark in needs_liboqs:
        test = mark(test)
    return test


# (signing backend, verifying backend): every pair, so each backend checks the other's work
PAIRS = [
    pytest.param(s, v, marks=needs_liboqs if "liboqs" in (s, v) else [], id=f"{s}->{v}")
    for s in ("cryptography", "liboqs")
    for v in ("cryptography", "liboqs")
]

SEED = bytes(range(32))
# sha256 of the ML-DSA-65 public key of SEED, on which cryptography, liboqs and
# dilithium-py agree: pins key derivation, so a library upgrade cannot change a run's keys.
SEED_PUBLIC_KEY_SHA256 = "d666806e11cee19a7c989f7445f90dd419cf4d2d51db8c0fdb4c0f0a542238c9"
MESSAGE = b"round 3 | client 17 | weights sha256 " + bytes(32)
CONTEXTS = [CTX_UPDATE, CTX_BLOCK, CTX_BEACON, CTX_GENESIS]


@pytest.fixture(scope="module")
def dilithium():
    """dilithium-py's ML_DSA_65: an independent FIPS 204 implementation (test-only)."""
    return pytest.importorskip("dilithium_py.ml_dsa").ML_DSA_65


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def signer(backend: str) -> Signer:
    return signer_from_seed(SEED, backend=backend)


def flip(data: bytes, bit: int) -> bytes:
    """`data` with bit number `bit` (0 = lowest bit of the first byte) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def bits_to_flip(length: int) -> list[int]:
    """First, a middle and the last bit of a `length`-byte string."""
    return [0, length * 4 + 3, length * 8 - 1]


# --------------------------------------------------------------------------- round trip


def test_sign_verify_round_trip(signer: Signer, backend: str) -> None:
    assert signer.backend_name == backend
    assert len(signer.public_key) == PUBLIC_KEY_BYTES
    signature = signer.sign(MESSAGE, CTX_UPDATE)
    assert len(signature) == SIGNATURE_BYTES
    assert verify(signer.public_key, MESSAGE, signature, CTX_UPDATE, backend=backend) is None
    assert Verifier(backend).verify(signer.public_key, MESSAGE, signature, CTX_UPDATE) is None


def test_empty_message_and_empty_context(signer: Signer, backend: str) -> None:
    signature = signer.sign(b"", b"")
    verify(signer.public_key, b"", signature, b"", backend=backend)
    with pytest.raises(SignatureError):
        verify(signer.public_key, b"", signature, CTX_UPDATE, backend=backend)


def test_signatures_are_hedged_not_deterministic(signer: Signer, backend: str) -> None:
    first, second = signer.sign(MESSAGE, CTX_BLOCK), signer.sign(MESSAGE, CTX_BLOCK)
    assert first != second
    for signature in (first, second):
        verify(signer.public_key, MESSAGE, signature, CTX_BLOCK, backend=backend)


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("field", ["signature", "message", "public_key"])
@pytest.mark.parametrize("where", [0, 1, 2], ids=["first", "middle", "last"])
def test_one_flipped_bit_fails(signer: Signer, backend: str, field: str, where: int) -> None:
    args = {"public_key": signer.public_key, "message": MESSAGE}
    args["signature"] = signer.sign(MESSAGE, CTX_UPDATE)
    args[field] = flip(args[field], bits_to_flip(len(args[field]))[where])
    with pytest.raises(SignatureError):
        verify(context=CTX_UPDATE, backend=backend, **args)


@pytest.mark.parametrize("signed_under", CONTEXTS)
def test_wrong_context_fails(signer: Signer, backend: str, signed_under: bytes) -> None:
    signature = signer.sign(MESSAGE, signed_under)
    verify(signer.public_key, MESSAGE, signature, signed_under, backend=backend)
    for other in [*CONTEXTS, b"", signed_under + b"\x00"]:
        if other != signed_under:
            with pytest.raises(SignatureError, match="does not verify"):
                verify(signer.public_key, MESSAGE, signature, other, backend=backend)


def test_contexts_are_distinct_and_fit_fips204() -> None:
    assert len(set(CONTEXTS)) == len(CONTEXTS)
    assert all(0 < len(ctx) <= 255 for ctx in CONTEXTS)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1],
        lambda s: s[: SIGNATURE_BYTES // 2],
        lambda s: b"",
        lambda s: s + b"\x00",
        lambda s: bytes(SIGNATURE_BYTES),
    ],
    ids=["minus-one-byte", "half", "empty", "plus-one-byte", "all-zero"],
)
def test_malformed_signature_raises_signature_error(signer: Signer, backend: str, mangle) -> None:
    signature = mangle(signer.sign(MESSAGE, CTX_UPDATE))
    with pytest.raises(SignatureError):
        verify(signer.public_key, MESSAGE, signature, CTX_UPDATE, backend=backend)


@pytest.mark.parametrize(
    "public_key",
    [b"", bytes(PUBLIC_KEY_BYTES - 1), bytes(PUBLIC_KEY_BYTES + 1), bytes(PUBLIC_KEY_BYTES)],
    ids=["empty", "short", "long", "all-zero"],
)
def test_malformed_public_key_raises_signature_error(
    signer: Signer, backend: str, public_key: bytes
) -> None:
    signature = signer.sign(MESSAGE, CTX_UPDATE)
    with pytest.raises(SignatureError):
        verify(public_key, MESSAGE, signature, CTX_UPDATE, backend=backend)


def test_signature_error_is_a_qfl_error() -> None:
    assert issubclass(SignatureError, QflError)
    assert issubclass(BackendUnavailable, QflError)


def test_another_keys_signature_fails(backend: str) -> None:
    signers = [signer_from_seed(bytes([i]) * 32, backend=backend) for i in range(3)]
    verifier = Verifier(backend)
    signatures = [s.sign(MESSAGE, CTX_UPDATE) for s in signers]
    for i, s in enumerate(signers):
        for j, signature in enumerate(signatures):
            if i == j:
                verifier.verify(s.public_key, MESSAGE, signature, CTX_UPDATE)
            else:
                with pytest.raises(SignatureError):
                    verifier.verify(s.public_key, MESSAGE, signature, CTX_UPDATE)


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33), "x" * 32], ids=repr)
def test_seed_must_be_32_bytes(seed) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        signer_from_seed(seed, backend="cryptography")


def test_context_longer_than_255_bytes_is_rejected(signer: Signer, backend: str) -> None:
    with pytest.raises(ValueError, match="255"):
        signer.sign(MESSAGE, bytes(256))
    signature = signer.sign(MESSAGE, bytes(255))
    verify(signer.public_key, MESSAGE, signature, bytes(255), backend=backend)
    with pytest.raises(ValueError, match="255"):
        verify(signer.public_key, MESSAGE, signature, bytes(256), backend=backend)


def test_unknown_backend_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="unknown signature backend 'openssl'"):
        resolve_backend("openssl")
    with pytest.raises(BackendUnavailable):
        signer_from_seed(SEED, backend="openssl")


# --------------------------------------------------------------------------- three implementations


@pytest.mark.parametrize(("signed_by", "verified_by"), PAIRS)
def test_cross_verification(dilithium, signed_by: str, verified_by: str) -> None:
    signer = signer_from_seed(SEED, backend=signed_by)
    signature = signer.sign(MESSAGE, CTX_UPDATE)
    verify(signer.public_key, MESSAGE, signature, CTX_UPDATE, backend=verified_by)
    assert dilithium.verify(signer.public_key, MESSAGE, signature, ctx=CTX_UPDATE)

    tampered = flip(signature, 12345)
    with pytest.raises(SignatureError):
        verify(signer.public_key, MESSAGE, tampered, CTX_UPDATE, backend=verified_by)
    assert not dilithium.verify(signer.public_key, MESSAGE, tampered, ctx=CTX_UPDATE)
    assert not dilithium.verify(signer.public_key, MESSAGE, signature, ctx=CTX_BLOCK)


@pytest.mark.parametrize("verified_by", BACKENDS)
def test_dilithium_signature_verifies_under_backend(dilithium, verified_by: str) -> None:
    public_key, secret_key = dilithium.key_derive(SEED)
    signature = dilithium.sign(secret_key, MESSAGE, ctx=CTX_GENESIS)
    verify(public_key, MESSAGE, signature, CTX_GENESIS, backend=verified_by)
    with pytest.raises(SignatureError):
        verify(public_key, flip(MESSAGE, 7), signature, CTX_GENESIS, backend=verified_by)


@pytest.mark.parametrize("seed", [SEED, bytes(32), b"\xff" * 32, hashlib.sha256(b"q").digest()])
def test_same_seed_same_public_key_everywhere(dilithium, backend: str, seed: bytes) -> None:
    public_key = signer_from_seed(seed, backend=backend).public_key
    assert public_key == signer_from_seed(seed, backend="cryptography").public_key
    assert public_key == dilithium.key_derive(seed)[0]


def test_seed_public_key_is_pinned(backend: str) -> None:
    public_key = signer_from_seed(SEED, backend=backend).public_key
    assert hashlib.sha256(public_key).hexdigest() == SEED_PUBLIC_KEY_SHA256


@requires_liboqs
def test_liboqs_expanded_secret_key_is_fips204(dilithium) -> None:
    """liboqs's seeded keygen yields FIPS 204's 4032-byte secret key, byte for byte."""
    public_key, secret_key = crypto._liboqs_keypair(crypto._load_oqs(), SEED)
    assert (public_key, secret_key) == dilithium.key_derive(SEED)


@requires_liboqs
def test_liboqs_seeded_keygen_is_thread_safe() -> None:
    """Keygen in 4 threads while others sign: every key is still the seed's key."""
    seeds = [hashlib.sha256(bytes([i])).digest() for i in range(24)]
    expected = [signer_from_seed(s, backend="cryptography").public_key for s in seeds]
    busy = signer_from_seed(SEED, backend="liboqs")

    def keygen(seed: bytes) -> bytes:
        busy.sign(MESSAGE, CTX_UPDATE)  # draws randomness from liboqs concurrently
        return signer_from_seed(seed, backend="liboqs").public_key

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(keygen, seeds)) == expected
    assert crypto._SEED_SOURCE.seed is None
    # randomness is back to the system source: two signatures differ
    assert busy.sign(MESSAGE, CTX_UPDATE) != busy.sign(MESSAGE, CTX_UPDATE)


@settings(max_examples=20, deadline=None)
@given(
    message=st.binary(max_size=256),
    context=st.binary(max_size=255),
    seed=st.binary(min_size=32, max_size=32),
)
def test_round_trip_property(message: bytes, context: bytes, seed: bytes) -> None:
    backends = ["cryptography", *(["liboqs"] if HAVE_LIBOQS and HAVE_OQS_PY else [])]
    for signed_by in backends:
        signer = signer_from_seed(seed, backend=signed_by)
        signature = signer.sign(message, context)
        for verified_by in backends:
            verify(signer.public_key, message, signature, context, backend=verified_by)
            with pytest.raises(SignatureError):
                verify(signer.public_key, message + b"!", signature, context, backend=verified_by)


# --------------------------------------------------------------------------- choosing a backend


def test_cryptography_is_always_available() -> None:
    assert resolve_backend("cryptography") == "cryptography"


@requires_liboqs
def test_auto_picks_liboqs_when_installed() -> None:
    assert resolve_backend() == "liboqs"
    assert resolve_backend("liboqs") == "liboqs"
    assert signer_from_seed(SEED).backend_name == "liboqs"


def test_liboqs_library_looks_in_install_path_and_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(crypto, "_system_liboqs", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OQS_INSTALL_PATH", str(tmp_path / "prefix"))
    assert liboqs_library() is None

    in_home = tmp_path / "home" / "_oqs" / "lib" / "liboqs.so"
    in_home.parent.mkdir(parents=True)
    in_home.touch()
    assert liboqs_library() == in_home

    in_prefix = tmp_path / "prefix" / "lib64" / "liboqs.so"
    in_prefix.parent.mkdir(parents=True)
    in_prefix.touch()
    assert liboqs_library() == in_prefix  # $OQS_INSTALL_PATH before ~/_oqs


PROBE = textwrap.dedent(
    """
    import json, sys
    from ledger.crypto import BackendUnavailable, liboqs_library, resolve_backend
    out = {"library": str(liboqs_library()), "auto": resolve_backend("auto")}
    try:
        resolve_backend("liboqs")
    except BackendUnavailable as exc:
        out["error"] = str(exc)
    out["oqs_imported"] = "oqs" in sys.modules
    print(json.dumps(out))
    """
)


def run_probe(home: Path, install_path: Path) -> dict:
    """Run PROBE in a fresh interpreter whose only liboqs locations are under tmp dirs."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    env.update(HOME=str(home), OQS_INSTALL_PATH=str(install_path), PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


no_system_liboqs = pytest.mark.skipif(
    ctypes.util.find_library("oqs") is not None, reason="liboqs is on the system library path"
)


@no_system_liboqs
def test_without_liboqs_auto_falls_back_and_oqs_is_never_imported(tmp_path: Path) -> None:
    out = run_probe(tmp_path / "home", tmp_path / "empty")
    assert out["library"] == "None"
    assert out["auto"] == "cryptography"
    assert "build-liboqs.sh" in out["error"]
    assert 'pip install -e ".[oqs]"' in out["error"]
    assert out["oqs_imported"] is False


@no_system_liboqs
def test_unloadable_liboqs_is_unavailable_and_oqs_is_never_imported(tmp_path: Path) -> None:
    """A broken liboqs.so would make liboqs-python download and build liboqs: never import it."""
    broken = tmp_path / "prefix" / "lib" / "liboqs.so"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not an ELF file")
    out = run_probe(tmp_path / "home", tmp_path / "prefix")
    assert out["library"] == str(broken)
    assert out["auto"] == "cryptography"
    assert "cannot be loaded" in out["error"]
    assert out["oqs_imported"] is False


@pytest.mark.parametrize("backend", ["cryptography"])
def test_verification_cache_remembers_only_valid_signatures(backend):
    signer = signer_from_seed(bytes(range(32)), backend=backend)
    signature = signer.sign(b"message", CTX_UPDATE)
    verifier = Verifier(backend, cache_size=2)
    verifier.verify(signer.public_key, b"message", signature, CTX_UPDATE)
    verifier.verify(signer.public_key, b"message", signature, CTX_UPDATE)  # cached
    assert len(verifier._verified) == 1
    bad = bytearray(signature)
    bad[10] ^= 1
    for _ in range(2):  # a failure is never cached: it fails every time
        with pytest.raises(SignatureError):
            verifier.verify(signer.public_key, b"message", bytes(bad), CTX_UPDATE)
    with pytest.raises(SignatureError):  # the cache key binds the context too
        verifier.verify(signer.public_key, b"message", signature, CTX_BLOCK)
    assert len(verifier._verified) == 1
    for i in range(3):  # bounded
        verifier.verify(
            signer.public_key, b"m%d" % i, signer.sign(b"m%d" % i, CTX_UPDATE), CTX_UPDATE
        )
    assert len(verifier._verified) == 2


# --------------------------------------------------------------------------- deterministic signing

# sha256 of FIPS 204's deterministic ML-DSA-65 signature (rnd = 32 zero bytes) of MESSAGE
# under CTX_UPDATE with SEED's key, as dilithium-py computes it: pins the variant.
DETERMINISTIC_SIGNATURE_SHA256 = "e934bc1bea0ec664992b2558ea8af5ead10c0cfac554920f2e8f873c576d9bc0"


@requires_liboqs
def test_liboqs_signs_fips204_deterministic(dilithium) -> None:
    det = signer_from_seed(SEED, backend="liboqs", deterministic=True)
    assert det.deterministic
    first, second = det.sign(MESSAGE, CTX_UPDATE), det.sign(MESSAGE, CTX_UPDATE)
    assert first == second
    assert hashlib.sha256(first).hexdigest() == DETERMINISTIC_SIGNATURE_SHA256
    _, secret_key = dilithium.key_derive(SEED)
    assert first == dilithium.sign(secret_key, MESSAGE, ctx=CTX_UPDATE, deterministic=True)
    assert det.sign(MESSAGE, CTX_BLOCK) != first  # the context is signed
    hedged = signer_from_seed(SEED, backend="liboqs")
    assert hedged.public_key == det.public_key
    for backend in ("liboqs", "cryptography"):
        verify(det.public_key, MESSAGE, first, CTX_UPDATE, backend=backend)
        with pytest.raises(SignatureError):
            verify(det.public_key, MESSAGE, flip(first, 100), CTX_UPDATE, backend=backend)
    assert dilithium.verify(det.public_key, MESSAGE, first, ctx=CTX_UPDATE)


@requires_liboqs
def test_deterministic_signing_leaves_hedged_signing_and_keygen_alone() -> None:
    det = signer_from_seed(SEED, backend="liboqs", deterministic=True)
    det.sign(MESSAGE, CTX_UPDATE)
    hedged = signer_from_seed(SEED, backend="liboqs")  # keygen after deterministic signing
    assert hedged.sign(MESSAGE, CTX_UPDATE) != hedged.sign(MESSAGE, CTX_UPDATE)
    assert det.sign(MESSAGE, CTX_UPDATE) == det.sign(MESSAGE, CTX_UPDATE)
    # from several threads at once: each deterministic signature is the same
    with ThreadPoolExecutor(max_workers=4) as pool:
        signatures = set(pool.map(lambda _: det.sign(MESSAGE, CTX_UPDATE), range(16)))
    assert len(signatures) == 1


def test_cryptography_refuses_deterministic_signing() -> None:
    with pytest.raises(BackendUnavailable, match="deterministic"):
        signer_from_seed(SEED, backend="cryptography", deterministic=True)
    assert not signer_from_seed(SEED, backend="cryptography").deterministic


def test_verifier_takes_bytes_like_arguments(signer: Signer, backend: str) -> None:
    signature = signer.sign(MESSAGE, CTX_UPDATE)
    verifier = Verifier(backend)
    verifier.verify(
        bytearray(signer.public_key), memoryview(MESSAGE), bytearray(signature), CTX_UPDATE
    )
    with pytest.raises(SignatureError):
        verifier.verify(signer.public_key, memoryview(MESSAGE[:-1]), signature, CTX_UPDATE)
