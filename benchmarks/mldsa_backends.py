"""ML-DSA-65 key derivation, sign and verify times per backend, in one run, on one core.

Next to `ledger.crypto`'s verify, the raw library call (cryptography's parsed public key,
liboqs-python's `verify_with_ctx_str`) shows what the wrapper costs (figure L1 compares
ledger verify throughput with raw verify; with liboqs, `ledger.crypto` calls liboqs' C
function directly). With liboqs, ``sign-det`` is FIPS 204's deterministic signing.

    python benchmarks/mldsa_backends.py [--n 500] [--message-bytes 32]

Prints one line per backend and operation: `<backend> <operation> <median microseconds>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from ledger.crypto import (
    CTX_UPDATE,
    BackendUnavailable,
    Verifier,
    liboqs_library,
    resolve_backend,
    signer_from_seed,
)


def median_us(call: Callable[[], object], n: int, batches: int = 5) -> float:
    """Median over `batches` of the mean time of `n // batches` calls, in microseconds."""
    call()
    per_batch = max(1, n // batches)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(per_batch):
            call()
        times.append((time.perf_counter() - start) / per_batch * 1e6)
    return statistics.median(times)


def raw_verify(backend: str, public_key: bytes) -> Callable[[bytes, bytes], object]:
    """The library's own verify for `public_key`, key parsed once (the L1 baseline)."""
    if backend == "cryptography":
        from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

        key = MLDSA65PublicKey.from_public_bytes(public_key)
        return lambda message, signature: key.verify(signature, message, CTX_UPDATE)
    import oqs  # ledger.crypto imported it already, from the library it found

    sig = oqs.Signature("ML-DSA-65")
    return lambda message, signature: sig.verify_with_ctx_str(
        message, signature, CTX_UPDATE, public_key
    )


def bench(backend: str, n: int, message: bytes) -> dict[str, float]:
    seed = os.urandom(32)
    signer = signer_from_seed(seed, backend=backend)
    signature = signer.sign(message, CTX_UPDATE)
    verifier = Verifier(backend)
    raw = raw_verify(backend, signer.public_key)
    times = {
        "keygen": median_us(lambda: signer_from_seed(seed, backend=backend), n // 5),
        "sign": median_us(lambda: signer.sign(message, CTX_UPDATE), n),
        "verify": median_us(
            lambda: verifier.verify(signer.public_key, message, signature, CTX_UPDATE), n
        ),
        "raw-verify": median_us(lambda: raw(message, signature), n),
    }
    if backend == "liboqs":  # FIPS 204's deterministic variant (LedgerConfig.signatures)
        deterministic = signer_from_seed(seed, backend=backend, deterministic=True)
        times["sign-det"] = median_us(lambda: deterministic.sign(message, CTX_UPDATE), n)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="calls per measurement")
    parser.add_argument("--message-bytes", type=int, default=32, help="32: a signed digest")
    args = parser.parse_args()
    message = os.urandom(args.message_bytes)
    print(f"liboqs library: {liboqs_library()}")
    results = {}
    for backend in ("cryptography", "liboqs"):
        try:
            resolve_backend(backend)
        except BackendUnavailable as exc:
            print(f"{backend} unavailable: {exc}")
            continue
        results[backend] = bench(backend, args.n, message)
        for operation, us in results[backend].items():
            print(f"{backend:12s} {operation:10s} {us:9.1f} us")
        wrapper = results[backend]["raw-verify"] / results[backend]["verify"]
        print(f"{backend:12s} verify throughput vs raw {wrapper:.2f}x")
    if len(results) == 2:
        for operation in ("sign", "verify"):
            ratio = results["cryptography"][operation] / results["liboqs"][operation]
            print(f"liboqs {operation} is {ratio:.1f}x faster than cryptography")


if __name__ == "__main__":
    main()
