"""L1: full ledger verification throughput against raw ML-DSA-65 verification, on one core.

Builds (in a temporary directory) an honest certified ledger: a Genesis block, then per
round a block with the round's `RoundOpen` and a block with every sampled client's signed
`Update` and the `RoundClose`; each block carries a quorum certificate of the validators'
signatures on its hash. With the defaults, 50 clients x 20 rounds = 1,000 updates and 4
validators (quorum 3). Then, pinned to one core and in the same process:

(a) `ledger.verify.verify_ledger(path)` from the file (canonical bytes, Merkle roots, hash
    links, quorum certificates, update signatures, contract rules), as signatures
    verified per second (its ``signatures_checked`` over the wall time);
(b) the backend's raw ML-DSA-65 verify call (liboqs-python's ``verify_with_ctx_str``,
    or cryptography's parsed ``MLDSA65PublicKey.verify``) over the very same
    (public key, message, signature, context) tuples in a tight loop, per second.

With liboqs, `ledger.crypto` calls liboqs' C function itself (liboqs-python's call copies
every argument into fresh buffers first), so (c) also prints that bare C call's rate and
(a) over it, for comparison; the last line stays (a) over (b) as defined above.

    python benchmarks/ledger_verify.py [--backend auto|liboqs|cryptography] [--updates N]

The last line is `L1 <a/b>` (target >= 0.6: verification costs little beyond the signatures).
"""

from __future__ import annotations

import argparse
import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads: one core, no thread pools

import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from ledger.consensus import quorum_size  # noqa: E402
from ledger.crypto import (  # noqa: E402
    CTX_BLOCK,
    CTX_UPDATE,
    Signer,
    liboqs_library,
    resolve_backend,
    signer_from_seed,
)
from ledger.encoding import digest  # noqa: E402
from ledger.keys import derive_seed, master_secret_from_run_seed  # noqa: E402
from ledger.records import (  # noqa: E402
    ZERO_HASH,
    Block,
    Genesis,
    RoundClose,
    RoundOpen,
    Transaction,
    UnsignedUpdate,
    Update,
    make_block,
    update_signing_payload,
)
from ledger.store import LedgerStore  # noqa: E402
from ledger.verify import verify_ledger  # noqa: E402

RUN_ID = "bench-ledger-verify"
MASTER = master_secret_from_run_seed(1)

Triple = tuple[bytes, bytes, bytes, bytes]  # (public key, message, signature, context)


def pin_one_core() -> str:
    """Pin this process to one CPU (where the OS allows it); say which."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to cpu {cpu}"
    return "not pinned (no sched_setaffinity here)"


def certify(block: Block, validators: dict[int, Signer], quorum: int) -> Block:
    """`block` with a certificate of the first `quorum` validators' signatures on its hash."""
    ids = sorted(validators)[:quorum]
    return block.with_certificate(
        tuple((i, validators[i].sign(block.hash, CTX_BLOCK)) for i in ids)
    )


def build_ledger(
    path: Path, backend: str, *, clients: int, rounds: int, n_validators: int
) -> tuple[int, list[Triple]]:
    """Write the honest ledger to `path`; return (updates, every signature's verify tuple)."""
    validators = {
        i: signer_from_seed(derive_seed(MASTER, "validator", i), backend=backend)
        for i in range(n_validators)
    }
    signers = {
        c: signer_from_seed(derive_seed(MASTER, "client", c), backend=backend)
        for c in range(clients)
    }
    vkeys = {i: s.public_key for i, s in validators.items()}
    quorum = quorum_size(n_validators)
    genesis = Genesis(
        run_id=RUN_ID,
        config_hash=digest(b"bench config"),
        crypto_backend=backend,
        validators=[(i, k) for i, k in sorted(vkeys.items())],
        clients=[(c, s.public_key) for c, s in sorted(signers.items())],
    )
    tx_lists: list[tuple[int, list[Transaction]]] = [(0, [genesis])]
    triples: list[Triple] = []
    sampled = tuple(range(clients))
    for rnd in range(1, rounds + 1):
        plan = {c: ("quantum" if c % 2 else "classical") for c in sampled}
        opening = RoundOpen(
            round=rnd, beacon=digest(b"beacon %d" % rnd), sampled=sampled, plan=plan
        )
        tx_lists.append((rnd, [opening]))
        body: list[Transaction] = []
        for c in sampled:
            unsigned = UnsignedUpdate(
                client_id=c,
                round=rnd,
                nonce=digest(b"nonce %d %d" % (c, rnd))[:16],
                delta_digest=digest(b"delta %d %d" % (c, rnd)),
                num_examples=100 + c,
                path=plan[c],
                metrics={"accuracy": 900_000 + c, "loss": 250_000 + rnd},
            )
            payload = update_signing_payload(unsigned, RUN_ID)
            signature = signers[c].sign(payload, CTX_UPDATE)
            body.append(unsigned.signed(signature))
            triples.append((signers[c].public_key, payload, signature, CTX_UPDATE))
        body.append(
            RoundClose(
                round=rnd,
                aggregate_weights_digest=digest(b"aggregate %d" % rnd),
                accepted=sampled,
                metrics={"accuracy": 910_000},
            )
        )
        tx_lists.append((rnd, body))
    prev = ZERO_HASH
    with LedgerStore(path) as store:
        for height, (rnd, txs) in enumerate(tx_lists):
            block = make_block(
                height=height,
                prev_hash=prev,
                proposer=height % n_validators,
                round=rnd,
                transactions=txs,
            )
            block = certify(block, validators, quorum)
            store.append(block)
            triples += [(vkeys[i], block.hash, sig, CTX_BLOCK) for i, sig in block.certificate]
            prev = block.hash
    updates = sum(isinstance(tx, Update) for _, txs in tx_lists for tx in txs)
    return updates, triples


def backend_detail(backend: str) -> str:
    """Where the backend comes from: the liboqs library, or the cryptography version."""
    if backend == "liboqs":
        return f"liboqs at {liboqs_library()}"
    import cryptography

    return f"cryptography {cryptography.__version__}"


def raw_verifier(backend: str, triples: list[Triple]) -> Callable[[], None]:
    """A tight loop of the backend's own verify call over `triples` (keys parsed up front)."""
    if backend == "cryptography":
        from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

        parsed = {pk: MLDSA65PublicKey.from_public_bytes(pk) for pk, _, _, _ in triples}
        calls = [(parsed[pk].verify, sig, msg, ctx) for pk, msg, sig, ctx in triples]

        def run_cryptography() -> None:
            for verify, sig, msg, ctx in calls:
                verify(sig, msg, ctx)  # raises InvalidSignature on failure

        return run_cryptography
    import oqs  # ledger.crypto loaded it (from the library it located)

    verify = oqs.Signature("ML-DSA-65").verify_with_ctx_str

    def run_liboqs() -> None:
        for pk, msg, sig, ctx in triples:
            if not verify(msg, sig, ctx, pk):
                raise RuntimeError("a raw liboqs verification failed")

    return run_liboqs


def bare_liboqs_verifier(triples: list[Triple]) -> Callable[[], None]:
    """A tight loop of liboqs' own C verify function over `triples` (no argument copies)."""
    import ctypes

    function = ctypes.CDLL(str(liboqs_library())).OQS_SIG_ml_dsa_65_verify_with_ctx_str
    function.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
    ]
    function.restype = ctypes.c_int
    calls = [(msg, len(msg), sig, len(sig), ctx, len(ctx), pk) for pk, msg, sig, ctx in triples]

    def run_bare() -> None:
        for args in calls:
            if function(*args) != 0:
                raise RuntimeError("a bare liboqs verification failed")

    return run_bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="auto", choices=("auto", "liboqs", "cryptography"))
    parser.add_argument("--updates", type=int, default=1000, help="signed updates in the ledger")
    parser.add_argument("--clients", type=int, default=50, help="clients (updates per round)")
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each; best counts")
    args = parser.parse_args()
    clients = max(1, min(args.clients, args.updates))
    rounds = max(1, -(-args.updates // clients))
    backend = resolve_backend(args.backend)
    pinned = pin_one_core()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch plays no part here; only keep it from spawning threads
        pass

    with tempfile.TemporaryDirectory(prefix="qfl-l1-") as tmp:
        path = Path(tmp) / "ledger.db"
        start = time.perf_counter()
        updates, triples = build_ledger(
            path, backend, clients=clients, rounds=rounds, n_validators=args.validators
        )
        build_s = time.perf_counter() - start
        print(f"backend {backend} ({backend_detail(backend)}); {pinned}")
        print(
            f"ledger: {updates} updates ({clients} clients x {rounds} rounds), "
            f"{args.validators} validators, {len(triples)} signatures, built in {build_s:.1f} s"
        )
        raw = raw_verifier(backend, triples)
        raw()  # warm-up
        start = time.perf_counter()
        verify_ledger(path, backend=backend)  # warm-up; its time is the process's first run
        cold_s = time.perf_counter() - start
        bare = bare_liboqs_verifier(triples) if backend == "liboqs" else None
        full_times, raw_times, bare_times = [], [], []
        checked = 0
        for _ in range(max(1, args.repeats)):  # interleaved, so all see the same machine
            start = time.perf_counter()
            report = verify_ledger(path, backend=backend)
            full_times.append(time.perf_counter() - start)
            checked = report.signatures_checked
            start = time.perf_counter()
            raw()
            raw_times.append(time.perf_counter() - start)
            if bare is not None:
                start = time.perf_counter()
                bare()
                bare_times.append(time.perf_counter() - start)
    if checked != len(triples):
        sys.exit(f"verify_ledger checked {checked} signatures, the ledger holds {len(triples)}")
    full_rate = checked / min(full_times)
    raw_rate = len(triples) / min(raw_times)
    print(
        f"(a) verify_ledger: {full_rate:8.0f} sig/s  ({min(full_times) * 1e3:.0f} ms for "
        f"{checked} signatures, median {statistics.median(full_times) * 1e3:.0f} ms; "
        f"first run in the process {cold_s * 1e3:.0f} ms)"
    )
    print(
        f"(b) raw {backend} verify: {raw_rate:8.0f} sig/s  ({min(raw_times) * 1e3:.0f} ms for "
        f"{len(triples)} signatures, median {statistics.median(raw_times) * 1e3:.0f} ms)"
    )
    if bare_times:
        bare_rate = len(triples) / min(bare_times)
        print(
            f"(c) bare liboqs C call: {bare_rate:8.0f} sig/s  (a/c = {full_rate / bare_rate:.3f})"
        )
    print(f"L1 {full_rate / raw_rate:.3f}")


if __name__ == "__main__":
    main()
