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

Where the validators run: in this process (the default of the pure class, and
``validator_placement: in_process``), or wherever a `ValidatorHost` starts them
(actors/ledger_keeper.py gives one that makes each validator its own Ray actor,
``validator_placement: actors``). Each is built from a `ValidatorSpec` by
`build_validator`, with its own signer, verifier, QRNG and update-signature check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field

from ledger.consensus import (
    REVEAL_BYTES,
    Consensus,
    ConsensusError,
    Decision,
    PendingHeight,
    Tamper,
    Validator,
    beacon_seed,
    forget_transactions,
    max_faults,
)
from ledger.contract import Contract, burned_nonces, update_signature_check
from ledger.crypto import CTX_UPDATE, Signer, Verifier, resolve_backend, signer_from_seed
from ledger.encoding import (
    LedgerIntegrityError,
    digest,
    domain_digest,
    to_micro,
    weights_digest,
)
from ledger.keys import KEY_SALT, MASTER_SECRET_BYTES, derive_seed
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
    encode_tx,
    forget_encoding,
    update_signing_payload,
)
from ledger.store import LedgerStore, head_height, open_readonly
from ledger.verify import verify_ledger

_log = logging.getLogger(__name__)


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
    validator_placement: Literal["auto", "actors", "in_process"] = Field(
        "auto",
        description="each validator its own Ray actor, or all inside the ledger keeper; "
        "auto: actors when the cluster has a CPU for each beside the client runners' "
        "(`placement_for`), else in the keeper",
    )
    validator_timeout_s: float = Field(
        60.0, gt=0, description="a validator call unanswered this long counts as crashed"
    )
    signatures: Literal["hedged", "deterministic"] = Field(
        "hedged",
        description="ML-DSA-65 signing: hedged (randomized), or FIPS 204's deterministic "
        "variant (reproducible ledger bytes; needs the liboqs backend)",
    )

    @property
    def deterministic(self) -> bool:
        return self.signatures == "deterministic"


def placement_for(
    placement: Literal["auto", "actors", "in_process"],
    *,
    cluster_cpus: float,
    runner_cpus: float,
    validators: int,
) -> Literal["actors", "in_process"]:
    """The validators' placement: `placement`, or for "auto" actors only when the cluster
    has a CPU for every validator beside the client runners' CPUs.

    Validator actors run a height's phases in parallel and fail alone (a crashed or
    Byzantine validator is one process), but each is a process that competes with the
    runners for the CPUs: on a 2-core machine four of them cost more per round than all
    four checking in the keeper (benchmarks/round_overhead.py, F1).
    """
    if placement != "auto":
        return placement
    return "actors" if cluster_cpus >= runner_cpus + validators else "in_process"


class SigningSpec(BaseModel):
    """What a client runner needs to sign its clients' updates."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str
    master_secret: bytes
    backend: Literal["liboqs", "cryptography"]
    deterministic: bool = False  # FIPS 204 deterministic signing (LedgerConfig.signatures)


class ValidatorSpec(BaseModel):
    """Everything one validator needs but the client registry (see `build_validator`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int = Field(ge=0)
    signing_seed: bytes = Field(min_length=32, max_length=32)  # its own key seed only
    validator_keys: dict[int, bytes]
    backend: Literal["liboqs", "cryptography"]
    deterministic: bool = False
    qrng: Literal["aer", "seeded"] = "aer"
    qrng_seed: int
    run_id: str
    skip_bytes: int = Field(0, ge=0)  # randomness already drawn (a resumed ledger's heights)


class ValidatorHost(Protocol):
    """Runs validators away from the keeper (e.g. each as a Ray actor: actors/validator.py).

    `start` returns one handle per spec (an ``index`` and the `Validator` methods
    ``commit``, ``reveal_and_commit``, ``propose``, ``endorse`` and ``precheck``, each
    returning a pending call); `resolve` and `share` are `ledger.consensus.Consensus`'s
    hooks; `post` sends calls nobody waits for (the keeper posts each round's accepted
    updates to `Validator.precheck` as it admits them); `stop` ends them.
    """

    def start(
        self,
        specs: Sequence[ValidatorSpec],
        registry: Mapping[int, bytes],
        tamper: Mapping[int, Tamper] | None = None,
    ) -> list[Any]:
        """Start one validator per spec (`tamper`: `build_validator`'s, by index); return
        their handles, in spec order."""

    def resolve(self, pending: list[Any]) -> list[Any]:
        """The values of pending calls, or the exception each raised (see `Consensus`)."""

    def share(self, value: Any) -> Any:
        """Publish `value` once for many calls."""

    def post(self, pending: list[Any]) -> None:
        """Let pending calls run without waiting for them (their errors are dropped)."""

    def stop(self) -> None:
        """Stop the validators."""


def build_validator(
    spec: ValidatorSpec,
    registry: Mapping[int, bytes],
    *,
    verifier: Verifier | None = None,
    tamper: Tamper | None = None,
    prechecked: dict[bytes, Transaction] | None = None,
) -> Validator:
    """Validator `spec.index`: its signer, QRNG, verifier and update-signature check.

    `verifier` (with its cache) and `prechecked` (`Validator`'s) may be shared by
    validators in one process; by default each gets its own. `tamper` is the test-only
    Byzantine hook of `Validator`.
    """
    signer = signer_from_seed(
        spec.signing_seed, backend=spec.backend, deterministic=spec.deterministic
    )
    verifier = verifier if verifier is not None else Verifier(spec.backend)
    randomness = _randomness(spec.qrng, spec.qrng_seed)
    if spec.skip_bytes:  # continue the stream where the run that wrote the ledger left it
        randomness(spec.skip_bytes)
    return Validator(
        spec.index,
        signer,
        spec.validator_keys,
        randomness,
        verifier=verifier,
        check_transactions=update_signature_check(verifier, registry, spec.run_id),
        tamper=tamper,
        prechecked=prechecked,
    )


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


def _recorded_transactions(path: Path) -> list[Transaction]:
    """Every transaction of the verified ledger at `path` (LedgerIntegrityError if bad)."""
    verify_ledger(path)
    store = open_readonly(path)
    try:
        return [tx for block in store.blocks() for tx in block.transactions]
    finally:
        store.close()


def _head_height(path: Path) -> int:
    height = head_height(path)
    if height is None:
        raise LedgerIntegrityError(f"{path}: an empty ledger cannot be resumed")
    return height


def client_public_keys(master: bytes, n_clients: int, backend: str) -> dict[int, bytes]:
    """The registry: each client's ML-DSA-65 public key, derived from the master secret."""
    return {k: client_signer(master, k, backend).public_key for k in range(n_clients)}


def client_kem_keys(master: bytes, n_clients: int) -> dict[int, bytes]:
    """Each client's ML-KEM-768 encapsulation key (`client_kem_key`), for Genesis."""
    return {k: client_kem_key(master, k) for k in range(n_clients)}


class LedgerKeeper:
    """Writes one run's ledger; `open_round` / `admit` / `close_round` once per round.

    The validators run in this process unless `host` is given (module docstring);
    `tamper` (test only, no configuration sets it) makes validator i Byzantine:
    ``tamper[i](honest_block)`` replaces every block it proposes.
    """

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
        host: ValidatorHost | None = None,
        tamper: Mapping[int, Tamper] | None = None,
        resume: bool = False,
        register_kem_keys: bool = False,
    ):
        """`resume`: continue the ledger already at `path` (a resumed run) instead of
        writing genesis: the chain is verified, its genesis must be this run's, the nonces
        it recorded stay burned, and a round it opened but did not close is open again.
        `register_kem_keys` (secure aggregation): Genesis also registers every client's
        ML-KEM-768 encapsulation key (`client_kem_keys`), read back through `kem_keys`."""
        self.backend = resolve_backend(config.backend)
        self.run_id = run_id
        self.path = Path(path)
        self.deterministic = config.deterministic
        seeds = [derive_seed(master_secret, "validator", i) for i in range(config.validators)]
        keys = {
            i: signer_from_seed(
                s, backend=self.backend, deterministic=self.deterministic
            ).public_key
            for i, s in enumerate(seeds)
        }
        # shared by the contract and in-process validators: each signature is checked once
        # however many of them re-check it
        self.verifier = Verifier(self.backend, cache_size=65536)
        self.registry = client_public_keys(master_secret, n_clients, self.backend)
        recorded: list[Transaction] = []
        if resume:
            recorded = _recorded_transactions(self.path)
        # every height drew one commitment (value and nonce) from each validator's source
        skip = 0 if not recorded else 2 * REVEAL_BYTES * (_head_height(self.path) + 1)
        specs = [
            ValidatorSpec(
                index=i,
                skip_bytes=skip,
                signing_seed=s,
                validator_keys=keys,
                backend=self.backend,
                deterministic=self.deterministic,
                qrng=config.qrng,
                qrng_seed=seed + i,
                run_id=run_id,
            )
            for i, s in enumerate(seeds)
        ]
        self.host = host
        # in this process, the validators share what one of them prechecked: decoding a
        # transaction and checking its signature once serves all four
        self._prechecked: dict[bytes, Transaction] = {}
        if host is None:
            tamper = tamper or {}
            self.validators: list[Any] = [
                build_validator(
                    spec,
                    self.registry,
                    verifier=self.verifier,
                    tamper=tamper.get(spec.index),
                    prechecked=self._prechecked,
                )
                for spec in specs
            ]
            self.consensus = Consensus(keys, verifier=self.verifier)
        else:
            self.validators = host.start(specs, self.registry, tamper)
            self.consensus = Consensus(
                keys, verifier=self.verifier, resolve=host.resolve, share=host.share
            )
        self.contract = Contract(
            run_id,
            self.registry,
            num_params=num_params,
            norm_bound=config.norm_bound,
            verifier=self.verifier,
            burned=burned_nonces(recorded),
        )
        self.last_decision: Decision | None = None  # how the newest block was certified
        self._pending: list[Transaction] = []
        self._unfinished: tuple[PendingHeight, int] | None = None  # begun, not certified
        genesis = Genesis(
            run_id=run_id,
            config_hash=digest(config_bytes),
            crypto_backend=self.backend,
            validators=tuple(keys.items()),
            clients=tuple(self.registry.items()),
            kem_keys=tuple(client_kem_keys(master_secret, n_clients).items())
            if register_kem_keys
            else (),
        )
        self.genesis = genesis  # equal to the recorded one (checked on resume)
        self.reopened: RoundPlan | None = None  # resume: the round the ledger left open
        try:
            self.store = LedgerStore(self.path)
            if resume:
                if recorded[0] != genesis:
                    raise LedgerIntegrityError(
                        f"{self.path}: its genesis is not this run's (run, config or keys "
                        "differ; a resume needs the master secret the run started with)"
                    )
                self.reopened = self._reopen(recorded)
            else:
                self._commit([genesis], round_=0)
        except BaseException:
            self.close()
            raise

    def _reopen(self, recorded: Sequence[Transaction]) -> RoundPlan | None:
        """Open again in the contract the last round the ledger opened and did not close."""
        opened = [tx for tx in recorded if isinstance(tx, RoundOpen)]
        closed = {tx.round for tx in recorded if isinstance(tx, RoundClose)}
        if not opened or opened[-1].round in closed:
            return None
        return self._opened(opened[-1], self.store.head()[0])

    @property
    def kem_keys(self) -> dict[int, bytes]:
        """Client id -> the ML-KEM-768 encapsulation key Genesis registers (empty: none)."""
        return dict(self.genesis.kem_keys)

    @property
    def head(self) -> tuple[int, bytes]:
        head = self.store.head()
        assert head is not None  # genesis is written in __init__
        return head

    def _commit(
        self, transactions: Sequence[Transaction] | Callable, round_: int
    ) -> tuple[int, Decision]:
        self._begin(transactions, round_)
        return self.finish()

    def _begin(self, transactions: Sequence[Transaction] | Callable, round_: int) -> PendingHeight:
        """The next height's beacon and transactions (`Consensus.begin_height`)."""
        self.finish()  # a height left unfinished is certified first (calls come in order)
        head = self.store.head()
        height, prev = (0, ZERO_HASH) if head is None else (head[0] + 1, head[1])
        try:
            pending = self.consensus.begin_height(
                height, prev, transactions, self.validators, round=round_
            )
        except ConsensusError as exc:
            raise self._cannot_certify(height, round_, exc) from exc
        self._unfinished = (pending, round_)
        return pending

    def finish(self) -> tuple[int, Decision | None]:
        """Certify and store the height `begin_close` began; (its height, how it went).

        Without one, the head's height (-1 before genesis) and None.
        """
        if self._unfinished is None:
            head = self.store.head()
            return (-1 if head is None else head[0]), None
        (pending, round_), self._unfinished = self._unfinished, None
        height = pending.h.height
        try:
            decision = self.consensus.finish_height(pending)
        except ConsensusError as exc:
            raise self._cannot_certify(height, round_, exc) from exc
        if decision.faulty or decision.failures:
            _log.warning(
                "ledger block %d: faulty validators %s, failed attempts %s",
                height,
                list(decision.faulty),
                [(f.leader, f.reason) for f in decision.failures],
            )
        self.store.append(decision.block)
        self.last_decision = decision
        if self.host is None:  # remote validators forget them when they reveal the next
            for validator in self.validators:
                validator.forget_below(height)
            forget_transactions(self._prechecked, decision.block.transactions)
        return height, decision

    def _cannot_certify(self, height: int, round_: int, exc: ConsensusError) -> ConsensusError:
        n = self.consensus.n
        return ConsensusError(
            f"the ledger cannot certify block {height} (round {round_}): {n} validators "
            f"tolerate {max_faults(n)} crashed or Byzantine, and more failed: {exc}"
        )

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
        """Validate updates of the open round (all at once, or part by part as they
        arrive); returns the accepted client ids, the rejections and the seconds spent."""
        start = time.perf_counter()
        for update, _ in updates:
            # A record that arrived pickled may carry any memo: forget it, so every
            # encoding, signing payload and stored body comes from the checked fields.
            if isinstance(update, Update):
                forget_encoding(update)
        # one thread: a round's parts are admitted while its clients train, and threads
        # (ML-DSA and SHA3 release the GIL) would only take CPU from the runners
        accepted, rejections = self.contract.admit(updates)
        self._pending += [u for u, _ in accepted] + list(rejections)
        seconds = time.perf_counter() - start
        if accepted:
            # the validators decode and check the accepted updates now, while the rest
            # train, rather than when the closing block is proposed
            records = tuple(u for u, _ in accepted)
            for record in records:  # encoded once here; the encodings travel with them
                encode_tx(record)
            if self.host is None:  # one precheck serves all (they share the table)
                self.validators[0].precheck(records)
            else:
                shared = self.host.share(records)
                self.host.post([validator.precheck(shared) for validator in self.validators])
        return [u.client_id for u, _ in accepted], rejections, seconds

    def close_round(
        self,
        round_: int,
        aggregate: np.ndarray,
        metrics: dict[str, float],
        fallbacks: Sequence[Fallback] = (),
        opening: Opening | None = None,
    ) -> RoundClosed:
        """Certify the round's updates, rejections, fallbacks and RoundClose, and open
        `opening`'s round in the same block when given (`begin_close`, then `finish`)."""
        closed = self.begin_close(round_, aggregate, metrics, fallbacks, opening)
        self.finish()
        return closed

    def begin_close(
        self,
        round_: int,
        aggregate: np.ndarray,
        metrics: dict[str, float],
        fallbacks: Sequence[Fallback] = (),
        opening: Opening | None = None,
    ) -> RoundClosed:
        """The closing height's first phase: its beacon and transactions, the round's
        updates, rejections, fallbacks and RoundClose, and `opening`'s RoundOpen when given.

        The next round's plan is final as soon as this returns: the height either
        certifies exactly these transactions (`finish`, or the next call that needs the
        chain) or fails, and then the run fails. So the next round may start training
        while its opening block is still being certified.
        """
        accepted = tuple(sorted(tx.client_id for tx in self._pending if isinstance(tx, Update)))
        close = RoundClose(
            round=round_,
            aggregate_weights_digest=weights_digest(aggregate),
            accepted=accepted,
            metrics={k: to_micro(v) for k, v in metrics.items() if np.isfinite(v)},
        )
        # in the block: the accepted updates, then the rejections, each by client id
        # (parts admitted in arrival order give the same block as one batch)
        closing = [*sorted(self._pending, key=_block_order), *fallbacks, close]

        def transactions(beacon) -> list[Transaction]:
            if opening is None:
                return closing
            return [*closing, self._opening_transaction(opening, beacon)]

        pending = self._begin(transactions, round_)
        self._pending = []
        height = pending.h.height
        if opening is None:
            return RoundClosed(height=height)
        return RoundClosed(height=height, next=self._opened(pending.transactions[-1], height))

    def close(self) -> None:
        """Close the store and stop the validators it started (if any)."""
        if getattr(self, "store", None) is not None:
            self.store.close()
        if self.host is not None:
            self.host.stop()


def _block_order(tx: Transaction) -> tuple[bool, int]:
    return (not isinstance(tx, Update), tx.client_id)


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
    deterministic: bool = False,
) -> Update:
    """The client's signed Update record for `delta` (ML-DSA-65, context qfl/update/v1).

    `signer` is the client's (from `client_signer`); pass a cached one to skip keygen
    (then it decides hedged or deterministic signing, else `deterministic` does).
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
    signer = signer or client_signer(master_secret, client_id, backend, deterministic=deterministic)
    return unsigned.signed(signer.sign(update_signing_payload(unsigned, run_id), CTX_UPDATE))


def client_signer(
    master_secret: bytes, client_id: int, backend: str, *, deterministic: bool = False
) -> Signer:
    """Client `client_id`'s ML-DSA-65 signer, derived from the run's master secret."""
    seed = derive_seed(master_secret, "client", client_id)
    return signer_from_seed(seed, backend=backend, deterministic=deterministic)


KEM_SEED_BYTES = 64  # an ML-KEM seed d || z (FIPS 203)
KEM_INFO_PREFIX = b"qfl/kem/v1/client/"


def client_kem_seed(master_secret: bytes, client_id: int) -> bytes:
    """The 64-byte ML-KEM-768 seed of `client_id`: HKDF-SHA256(master, KEY_SALT, info).

    info = b"qfl/kem/v1/client/<id>" (decimal id), distinct from every ML-DSA seed's info
    (`ledger.keys.key_info`), so a client's KEM and signing keys are independent.
    """
    if not isinstance(master_secret, bytes) or len(master_secret) < MASTER_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MASTER_SECRET_BYTES} bytes")
    if isinstance(client_id, bool) or not isinstance(client_id, int) or client_id < 0:
        raise ValueError(f"client id must be an int >= 0, got {client_id!r}")
    info = KEM_INFO_PREFIX + str(client_id).encode("ascii")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEM_SEED_BYTES, salt=KEY_SALT, info=info)
    return hkdf.derive(master_secret)


def client_kem_key(master_secret: bytes, client_id: int) -> bytes:
    """Client `client_id`'s 1184-byte ML-KEM-768 encapsulation key (what Genesis registers)."""
    private = mlkem.MLKEM768PrivateKey.from_seed_bytes(client_kem_seed(master_secret, client_id))
    return private.public_key().public_bytes_raw()
