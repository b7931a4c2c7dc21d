"""The ledger of one run: genesis, round blocks, validated updates (pure; actors wrap it).

Per round the keeper writes one certified block (the first round has one more):

1. `open_round` (round 0, or a resumed run): a RoundOpen whose sampled clients are
   drawn from the height's randomness beacon (validators' QRNG values,
   commit-reveal), so anyone can re-derive who was picked; the keeper's contract
   opens the round.
2. `close_round`: the round's Update records the contract accepted, a Rejection
   for every update it refused (with the rule), Fallback events, a RoundClose with
   the aggregate weights digest and the round's metrics, and, unless it is the
   last round, the next round's RoundOpen, sampled from this height's beacon.
   Closing a round and opening the next in one height saves a consensus height
   (commit, reveal, proposal, votes) per round; the beacon is still drawn after
   every update of the closing round is fixed, so it is no more predictable.

Blocks go through `ledger.consensus.Consensus` (3f+1 validators, quorum
certificates) and are appended to the SQLite store. Keys come from the run's
master secret by HKDF, so a run is reproducible from its seed; the validators'
randomness comes from a QRNG (Hadamard-and-measure on Aer) seeded per validator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ledger.consensus import Consensus, Validator, beacon_seed
from ledger.contract import Contract, update_signature_check
from ledger.crypto import CTX_UPDATE, Signer, Verifier, resolve_backend, signer_from_seed
from ledger.encoding import digest, domain_digest, to_micro, weights_digest
from ledger.keys import derive_seed
from ledger.records import (
    ZERO_HASH,
    Fallback,
    Genesis,
    Rejection,
    RoundClose,
    RoundOpen,
    Transaction,
    UnsignedUpdate,
    Update,
    update_signing_payload,
)
from ledger.store import LedgerStore


class LedgerConfig(BaseModel):
    """Ledger settings of a run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    validators: int = Field(4, ge=1, description="3f+1 validators (1 for quick runs)")
    backend: Literal["auto", "liboqs", "cryptography"] = "auto"
    norm_bound: float | None = Field(None, gt=0, description="max L2 norm of an update")
    qrng: Literal["aer", "seeded"] = Field(
        "aer", description="validators' beacon randomness: Aer QRNG, or a seeded generator"
    )


class SigningSpec(BaseModel):
    """What a client runner needs to sign its clients' updates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    master_secret: bytes
    backend: Literal["liboqs", "cryptography"]


class RoundPlan(BaseModel):
    """Who trains in a round, as certified in its RoundOpen block."""

    model_config = ConfigDict(frozen=True)

    round: int
    sampled: tuple[int, ...]
    beacon: bytes
    height: int
    plan: dict[int, str] = {}  # client id -> "classical" | "quantum"


class Opening(BaseModel):
    """The round to open at a height: `sample(n, k, rng)` picks clients from its beacon.

    `assign(sampled)` gives each sampled client its path (the scheduler's plan, Eq. 9);
    without it every client is assigned classical.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    round: int = Field(ge=0)
    n_clients: int = Field(ge=1)
    per_round: int = Field(ge=1)
    sample: Callable
    assign: Callable | None = None


class RoundClosed(BaseModel):
    """A round's closing block: its height, and the next round's plan when it opened one."""

    model_config = ConfigDict(frozen=True)

    height: int
    next: RoundPlan | None = None


class RoundLedgerStats(BaseModel):
    """What the ledger did in a round (for MLflow)."""

    model_config = ConfigDict(frozen=True)

    height: int
    accepted: int
    rejected: int
    verify_seconds: float
    consensus_seconds: float


def buffered(source: Callable[[int], bytes], chunk: int = 4096) -> Callable[[int], bytes]:
    """Serve small draws from one large draw of `source` (one QRNG job per `chunk` bytes)."""
    pool = bytearray()

    def draw(n: int) -> bytes:
        while len(pool) < n:
            pool.extend(source(max(chunk, n)))
        out = bytes(pool[:n])
        del pool[:n]
        return out

    return draw


def _randomness(kind: str, seed: int) -> Callable[[int], bytes]:
    if kind == "seeded":
        return np.random.default_rng(seed).bytes
    from quantum.qrng import QRNG

    return buffered(QRNG(seed_simulator=seed).random_bytes)


def client_public_keys(master: bytes, n_clients: int, backend: str) -> dict[int, bytes]:
    """The registry: each client's ML-DSA-65 public key, derived from the master secret."""
    return {k: client_signer(master, k, backend).public_key for k in range(n_clients)}


class LedgerKeeper:
    """Writes one run's ledger; `open_round` / `admit` / `close_round` once per round."""

    def __init__(
        self,
        path: Path,
        *,
        run_id: str,
        master_secret: bytes,
        n_clients: int,
        num_params: int,
        config_bytes: bytes,
        config: LedgerConfig,
        seed: int,
    ):
        self.backend = resolve_backend(config.backend)
        self.run_id = run_id
        self.path = Path(path)
        self.store = LedgerStore(self.path)
        signers = [
            signer_from_seed(derive_seed(master_secret, "validator", i), backend=self.backend)
            for i in range(config.validators)
        ]
        keys = {i: s.public_key for i, s in enumerate(signers)}
        # shared by the contract and the in-process validators: each signature is
        # checked once however many of them re-check it
        self.verifier = Verifier(self.backend, cache_size=65536)
        self.validators = [
            Validator(i, s, keys, _randomness(config.qrng, seed + i), verifier=self.verifier)
            for i, s in enumerate(signers)
        ]
        self.consensus = Consensus(keys, verifier=self.verifier)
        self.registry = client_public_keys(master_secret, n_clients, self.backend)
        self.contract = Contract(
            run_id,
            self.registry,
            num_params=num_params,
            norm_bound=config.norm_bound,
            verifier=self.verifier,
        )
        self._check = update_signature_check(self.verifier, self.registry, run_id)
        genesis = Genesis(
            run_id=run_id,
            config_hash=digest(config_bytes),
            crypto_backend=self.backend,
            validators=tuple(keys.items()),
            clients=tuple(self.registry.items()),
        )
        self._commit([genesis], round_=0)
        self._pending: list[Transaction] = []

    @property
    def head(self) -> tuple[int, bytes]:
        head = self.store.head()
        assert head is not None  # genesis is written in __init__
        return head

    def _commit(
        self, transactions: Sequence[Transaction] | Callable, round_: int
    ) -> tuple[int, object]:
        head = self.store.head()
        height, prev = (0, ZERO_HASH) if head is None else (head[0] + 1, head[1])
        decision = self.consensus.run_height(
            height,
            prev,
            transactions,
            self.validators,
            round=round_,
            check_transactions=self._check,
        )
        self.store.append(decision.block)
        for validator in self.validators:
            validator.forget_below(height)
        return height, decision

    def _opening_transaction(self, opening: Opening, beacon) -> RoundOpen:
        rng = np.random.default_rng(beacon_seed(beacon))
        sampled = tuple(sorted(opening.sample(opening.n_clients, opening.per_round, rng)))
        plan = (
            opening.assign(sampled)
            if opening.assign is not None
            else dict.fromkeys(sampled, "classical")
        )
        return RoundOpen(round=opening.round, beacon=beacon.value, sampled=sampled, plan=plan)

    def _opened(self, opened: RoundOpen, height: int) -> RoundPlan:
        self.contract.open_round(opened.round, opened.sampled)
        return RoundPlan(
            round=opened.round,
            sampled=opened.sampled,
            beacon=opened.beacon,
            height=height,
            plan=opened.plan,
        )

    def open_round(
        self, round_: int, n_clients: int, per_round: int, sample: Callable, assign=None
    ) -> RoundPlan:
        """Certify round `round_`'s RoundOpen alone (the first round, or after a resume)."""
        opening = Opening(
            round=round_, n_clients=n_clients, per_round=per_round, sample=sample, assign=assign
        )
        height, decision = self._commit(
            lambda beacon: [self._opening_transaction(opening, beacon)], round_
        )
        return self._opened(decision.block.transactions[0], height)

    def admit(
        self, updates: Sequence[tuple[Update, np.ndarray]]
    ) -> tuple[list[int], list[Rejection], float]:
        """Validate the round's updates; returns accepted client ids, rejections, seconds."""
        start = time.perf_counter()
        accepted, rejections = self.contract.admit(updates)
        self._pending = [u for u, _ in accepted] + list(rejections)
        return [u.client_id for u, _ in accepted], rejections, time.perf_counter() - start

    def close_round(
        self,
        round_: int,
        aggregate: np.ndarray,
        metrics: dict[str, float],
        fallbacks: Sequence[Fallback] = (),
        opening: Opening | None = None,
    ) -> RoundClosed:
        """Certify the round's updates, rejections, fallbacks and RoundClose, and open
        `opening`'s round in the same block when given."""
        accepted = tuple(sorted(tx.client_id for tx in self._pending if isinstance(tx, Update)))
        close = RoundClose(
            round=round_,
            aggregate_weights_digest=weights_digest(aggregate),
            accepted=accepted,
            metrics={k: to_micro(v) for k, v in metrics.items() if np.isfinite(v)},
        )
        closing = [*self._pending, *fallbacks, close]

        def transactions(beacon) -> list[Transaction]:
            if opening is None:
                return closing
            return [*closing, self._opening_transaction(opening, beacon)]

        height, decision = self._commit(transactions, round_)
        self._pending = []
        if opening is None:
            return RoundClosed(height=height)
        opened = self._opened(decision.block.transactions[-1], height)
        return RoundClosed(height=height, next=opened)

    def close(self) -> None:
        self.store.close()


def update_nonce(master_secret: bytes, round_: int, client_id: int) -> bytes:
    """A 16-byte nonce unique per (run, round, client) and reproducible from the seed."""
    data = round_.to_bytes(8, "big") + client_id.to_bytes(8, "big")
    return domain_digest("nonce/v1", master_secret + data)[:16]


def sign_update(
    *,
    run_id: str,
    master_secret: bytes,
    client_id: int,
    round_: int,
    nonce: bytes,
    delta: np.ndarray,
    num_examples: int,
    path: Literal["classical", "quantum", "fallback"],
    metrics: dict[str, float],
    backend: str,
    signer: Signer | None = None,
) -> Update:
    """The client's signed Update record for `delta` (ML-DSA-65, context qfl/update/v1).

    `signer` is the client's (from `client_signer`); pass a cached one to skip keygen.
    """
    unsigned = UnsignedUpdate(
        client_id=client_id,
        round=round_,
        nonce=nonce,
        delta_digest=weights_digest(delta),
        num_examples=num_examples,
        path=path,
        metrics={k: to_micro(v) for k, v in metrics.items() if np.isfinite(v)},
    )
    signer = signer or client_signer(master_secret, client_id, backend)
    return unsigned.signed(signer.sign(update_signing_payload(unsigned, run_id), CTX_UPDATE))


def client_signer(master_secret: bytes, client_id: int, backend: str) -> Signer:
    """Client `client_id`'s ML-DSA-65 signer, derived from the run's master secret."""
    return signer_from_seed(derive_seed(master_secret, "client", client_id), backend=backend)
