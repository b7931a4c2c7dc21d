"""One secure-aggregation round over the client pool (issue 8; Bonawitz et al. 2017).

The pure protocol is `federated.secagg`; this module runs it in a real round. Client
steps run in the runner actors, server steps in the driver:

    driver (SecureRound)                               runner actors (ClientRunner)
    Roster: the sampled clients' keys, t
    pool.train_secure, a few calls per runner --->     train, keep the update, key_exchange
    receive_key_exchanges -> U1
    secure_share, one call per runner ----------->     share_keys of its clients
    route_shares -> U2, public weights
    secure_mask, one call per runner ------------>     mask, sign the ledger record
    ClientUpdates (digest carriers) -> keeper.admit    (in Federation.step)
    collect_masked(admitted) -> U3
    secure_unmask, one call per runner ---------->     unmask
    finish -> the sum; DP noise; server step
    secure_end, one call per runner ------------->     drop the round's state

Routing. `pool.train_secure` plans the clients onto runners, in batches, as plain
training does (`federated.client.balance`, `batch_plan`) and reports which runner
(slot) now holds each client's state; every later step of that client goes to the same
slot, batched per runner. The state lives for one round: `secure_end` drops it, and a
runner entering a later round drops what is left of an earlier one.

Weights. They are public and applied before masking. FedAvg/FedProx: client k masks
w_k x_k with w_k = n_k / sum_{j in U2} n_j (n_k is also in its signed ledger record); the
server divides the unmasked sum by sum_{k in U3} w_k, which is FedAvg over U3 up to the
fixed-point resolution 1 / secagg.scale per client. Differential privacy: w_k = 1;
central mode: clients clip to C before masking (the server can no longer clip) and the
server adds N(0, z^2 C^2 I) to the unmasked sum (`add_central_noise`, the round's server
noise generator, as in the plain DP round) and divides by the number of clients sampled;
local mode: the clients noised their own updates, the server divides the sum likewise.

What the ledger signs. The server receives y_k (the masked input) and w_k, never x_k,
so that is what each client signs and the keeper checks: the usual `Update` record
(round, nonce, num_examples, path, loss, ML-DSA-65 under the client's registered key)
whose delta digest is that of `digest_carrier(masked_digest(y_k, w_k))`, a float32
vector of the model's size carrying SHA-256 of the masked input. The driver rebuilds the
carrier from the masked input it received (it never takes the runner's word for it), so
the keeper's unchanged checks (signature, digest, shape, finite) bind exactly the vector
that enters the sum. Signing x_k's digest instead would bind nothing the server can
check and would let anyone who reads the ledger confirm a guessed update. A masked input
the keeper rejects is left out of the sum like a client that dropped before masking.
ledger.norm_bound is rejected under secure aggregation (pipelines/config.py via
`check_secagg_config`): the keeper would be bounding the carrier, not the update; a
bound on updates comes from clipping on the clients (privacy.mode central, privacy.clip).

Dropouts. A client that fails before the key exchange is not in U1; before sharing, not
in U2; before its masked input arrives (or whose input the keeper rejects), it is in
U2 \\ U3: its input is not in the sum and the survivors' shares rebuild its pair masks. A
client that fails after masking (U3, no unmask answer) is *recovered*: its input stays in
the sum and the others' shares rebuild its self-mask. Fewer than t clients at any step:
`SecAggAborted`; the round records it (`secagg_failed` = 1, a `ClientFailure` with the
reason for every sampled client, in rounds.jsonl) and the global model and the server
optimizer stay as they were: never a wrong sum.

Per round MLflow gets secagg_failed, secagg_included (|U3|), secagg_dropped (sampled
clients whose input is not in the sum), secagg_recovered, secagg_threshold,
secagg_seconds (driver wall time of the protocol outside local training: sharing,
masking, unmasking, the server's unmasking and step) and secagg_key_exchange_seconds
(the clients' key-exchange time, summed; it runs inside the training calls). The
round's RoundClose on the ledger records the counts among them (`LEDGER_METRICS`, via
`secagg_ledger_metrics`; no timings), so an aborted round is on the ledger too.

Keys. Each client's ML-KEM-768 encapsulation key and ML-DSA-65 key derive from the run's
master secret (`ledger.keeper.client_kem_key`, `ledger.keeper.client_signer`). With a
ledger, its Genesis registers both for every client (`Genesis.clients`,
`Genesis.kem_keys`) and the roster takes them from there (`RosterKeys.from_genesis`): the
driver re-derives nothing, and a client whose own key differs from the registered one
(a key substituted at registration) refuses the round in its first step (`SecAggClient`
compares them), so it is a dropout and no pair key is ever agreed with the substitute.
Without a ledger there is no registry: the driver derives both keys from the master
secret (`RosterKeys.derived`), as the clients do.

Key agreement. Each client signs its key exchange (ML-DSA-65 under its registered key,
context `federated.secagg.CTX_SECAGG`) over the SHA-256 digest of every ML-KEM
ciphertext and its commitments; the server drops an exchange whose signature or
ciphertext digests do not check (the sender is not in U1), and each recipient checks them
again before decapsulating.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import ray

from actors.pool import ClientPool, RoundResult
from federated.aggregate import AggregationConfig, PrivateStep, ServerOptimizer
from federated.client import SecAggSpec, SecureTrained
from federated.messages import ClientFailure, ClientTask, ClientUpdate
from federated.privacy import PrivacyConfig, add_central_noise
from federated.secagg import (
    MaskedInput,
    Roster,
    SecAggAborted,
    SecAggConfig,
    SecAggFailure,
    SecAggResult,
    SecAggServer,
    digest_carrier,
    kem_public_key,
    masked_digest,
    threshold_count,
)
from ledger.crypto import Verifier, resolve_backend
from ledger.keeper import client_signer
from ledger.records import Genesis
from qfl.errors import TrainingError

KEY_CACHE = 4096  # clients' public keys kept by the driver
# the counts a round's RoundClose records on the ledger (no timings: ledger bytes stay
# reproducible); secagg_failed = 1 marks a round aborted with fewer than t clients
LEDGER_METRICS = (
    "secagg_failed",
    "secagg_included",
    "secagg_dropped",
    "secagg_recovered",
    "secagg_threshold",
)


def secagg_ledger_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The secure-aggregation counts among a round's `metrics`, for its RoundClose
    (empty for a round without secure aggregation)."""
    return {k: metrics[k] for k in LEDGER_METRICS if k in metrics}


@dataclass(frozen=True)
class RosterKeys:
    """Where a round's roster gets each client's public keys, and which source that is.

    `kem(k)`: client k's ML-KEM-768 encapsulation key; `signing(k)`: its ML-DSA-65 key.
    """

    kem: Callable[[int], bytes]
    signing: Callable[[int], bytes]
    source: Literal["ledger", "derived"]

    @classmethod
    def from_genesis(cls, genesis: Genesis) -> RosterKeys:
        """The keys the ledger's Genesis registers; TrainingError if it has no KEM keys."""
        if not genesis.kem_keys:
            raise TrainingError(
                f"the ledger of run {genesis.run_id} registers no ML-KEM keys: secure "
                "aggregation needs a Genesis written with them (register_kem_keys)"
            )
        kem, signing = dict(genesis.kem_keys), dict(genesis.clients)
        return cls(
            kem=functools.partial(_registered, kem, "ML-KEM-768"),
            signing=functools.partial(_registered, signing, "ML-DSA-65"),
            source="ledger",
        )

    @classmethod
    def derived(cls, master_secret: bytes, backend: str) -> RosterKeys:
        """No ledger: both keys derived from the master secret (cached per client)."""
        return cls(
            kem=functools.lru_cache(maxsize=KEY_CACHE)(
                functools.partial(kem_public_key, master_secret)
            ),
            signing=functools.lru_cache(maxsize=KEY_CACHE)(
                lambda k: client_signer(master_secret, k, backend).public_key
            ),
            source="derived",
        )


def _registered(keys: Mapping[int, bytes], what: str, client_id: int) -> bytes:
    key = keys.get(client_id)
    if key is None:
        raise TrainingError(f"client {client_id} has no {what} key on the ledger")
    return key


def build_roster(
    config: SecAggConfig, keys: RosterKeys, round_: int, clients: Iterable[int]
) -> Roster:
    """Round `round_`'s participants with their public keys (from `keys`) and t."""
    ids = sorted(clients)
    return Roster(
        round=round_,
        threshold=threshold_count(config, len(ids)),
        kem_keys={k: keys.kem(k) for k in ids},
        signing_keys={k: keys.signing(k) for k in ids},
    )


@dataclass
class _Pending:
    """The driver's side of the open secure round, between `run_round` and `aggregate`."""

    round: int
    server: SecAggServer
    participants: tuple[int, ...]
    slots: dict[int, int] = field(default_factory=dict)  # client -> runner holding its state
    inputs: dict[int, MaskedInput] = field(default_factory=dict)  # well-formed, arrived
    failure: SecAggFailure | None = None
    seconds: float = 0.0
    key_exchange_seconds: float = 0.0


class SecureRound:
    """Runs a round's training and secure aggregation over a `ClientPool`.

    `run_round` has `ClientPool.run_round`'s signature: it trains, runs the protocol up to
    the masked inputs and returns them as `ClientUpdate`s for the ledger (digest carriers,
    no plain update); `aggregate` then unmasks the sum of the admitted ones and steps the
    model with the aggregator's server optimizer. `keys`: where rosters get the clients'
    public keys (the ledger's Genesis, `RosterKeys.from_genesis`); None: derived from the
    master secret (a run without a ledger).
    """

    def __init__(
        self,
        config: SecAggConfig,
        pool: ClientPool,
        aggregator: Any,
        *,
        aggregation: AggregationConfig,
        privacy: PrivacyConfig,
        master_secret: bytes,
        backend: str,
        num_params: int,
        timeout_s: float,
        keys: RosterKeys | None = None,
    ):
        if not config.enabled:
            raise TrainingError("SecureRound needs secagg.enabled")
        self.config = config
        self.pool = pool
        self.aggregator = aggregator
        self.aggregation = aggregation
        self.num_params = num_params
        self.timeout_s = timeout_s
        clip = privacy.clip if privacy.mode == "central" else None
        self.equal_weights = privacy.enabled  # DP-FedAvg: the plain sum, then / sampled
        backend = resolve_backend(backend)
        self.spec = SecAggSpec(
            master_secret=master_secret, backend=backend, scale=config.scale, clip=clip
        )
        self._verifier = Verifier(backend)
        self.keys = keys if keys is not None else RosterKeys.derived(master_secret, backend)
        self._pending: _Pending | None = None

    def roster(self, round_: int, clients: Iterable[int]) -> Roster:
        """Round `round_`'s participants with their public keys and the threshold t."""
        return build_roster(self.config, self.keys, round_, clients)

    # ------------------------------------------------------------ steps 1-3

    def run_round(
        self,
        weights_ref: ray.ObjectRef,
        tasks: list[ClientTask],
        timeout_s: float,
        costs: list[float] | None = None,
    ) -> RoundResult:
        """Train, exchange keys, share and mask; the masked inputs as ledger-ready updates."""
        if self._pending is not None:  # a round that was never aggregated
            self._end(self._pending)
            self._pending = None
        if not tasks:
            return RoundResult()
        t = tasks[0].round
        roster = self.roster(t, [task.client_id for task in tasks])
        server = SecAggServer(roster, scale=self.config.scale, verifier=self._verifier)
        pending = self._pending = _Pending(round=t, server=server, participants=roster.participants)
        trained, failures = self.pool.train_secure(
            weights_ref, tasks, timeout_s, costs, ray.put(roster), self.spec
        )
        start = time.perf_counter()
        pending.slots = {k: slot for k, (slot, _) in trained.items()}
        summaries: dict[int, SecureTrained] = {k: s for k, (_, s) in trained.items()}
        pending.key_exchange_seconds = sum(s.exchange_seconds for s in summaries.values())
        lost: dict[int, str] = {}
        updates: list[ClientUpdate] = []
        try:
            exchanges = server.receive_key_exchanges([s.exchange for s in summaries.values()])
            shared = ray.put(exchanges)
            bundles = self._stage(
                pending, "secure_share", server.u1, lambda ks: (t, shared, ks), lost
            )
            deliveries = server.route_shares([bundles[k] for k in sorted(bundles)])
            weights = self._mask_weights(summaries, server.u2)

            def mask_args(ks: list[int]) -> tuple:
                return t, {k: deliveries[k] for k in ks}, {k: weights[k] for k in ks}

            masked = self._stage(pending, "secure_mask", server.u2, mask_args, lost)
            for k in sorted(masked):
                answer, summary = masked[k], summaries[k]
                problem = self._malformed(answer.masked, k, t, weights[k])
                if problem is not None:
                    lost[k] = problem
                    continue
                pending.inputs[k] = answer.masked
                carrier = digest_carrier(masked_digest(answer.masked), self.num_params)
                updates.append(summary.update(carrier, answer.record, answer.sign_seconds))
        except SecAggAborted as exc:
            pending.failure = exc.failure
            updates = []
        lost = dict(server.rejected) | lost
        failures += [_failure(k, t, why) for k, why in lost.items()]
        pending.seconds += time.perf_counter() - start
        return RoundResult(updates=updates, failures=sorted(failures, key=lambda f: f.client_id))

    # ------------------------------------------------------------ step 4 and the server

    def aggregate(
        self,
        t: int,
        weights: np.ndarray,
        accepted: Collection[int],
        result: RoundResult,
        private: PrivateStep | None = None,
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Unmask the sum of the `accepted` masked inputs; w_{t+1} and the round's metrics.

        On an abort the weights come back unchanged and a failure for every sampled
        client without one is appended to `result.failures` (what rounds.jsonl records).
        """
        pending, self._pending = self._pending, None
        if pending is None or pending.round != t:
            raise TrainingError(f"no secure round {t} is open")
        start = time.perf_counter()
        server, failure = pending.server, pending.failure
        outcome: SecAggResult | None = None
        answered: dict[int, Any] = {}
        lost: dict[int, str] = {}  # clients that did not answer the unmask request
        try:
            if failure is None:
                admitted = [pending.inputs[k] for k in sorted(accepted) if k in pending.inputs]
                request = server.collect_masked(admitted)
                answered = self._stage(
                    pending,
                    "secure_unmask",
                    request.survivors,
                    lambda ks: (t, request, ks),
                    lost,
                )
                outcome = server.finish([answered[k] for k in sorted(answered)])
        except SecAggAborted as exc:
            failure = exc.failure
        finally:
            self._end(pending)
        metrics = {"secagg_threshold": float(server.threshold)}
        if outcome is None:
            if failure is None:  # cannot happen: finish returns an outcome or raises
                raise TrainingError(f"secure round {t} ended with neither a sum nor an abort")
            self._record_abort(failure, pending, result, lost)
            weights_next = weights
            metrics |= {"secagg_failed": 1.0, "secagg_included": 0.0, "secagg_recovered": 0.0}
            metrics["secagg_dropped"] = float(len(pending.participants))
        else:
            delta = self._delta(outcome, private)
            weights_next = self._server_step(weights, delta)
            recovered = [k for k in outcome.included if k not in answered]
            metrics |= {
                "secagg_failed": 0.0,
                "secagg_included": float(len(outcome.included)),
                "secagg_dropped": float(len(pending.participants) - len(outcome.included)),
                "secagg_recovered": float(len(recovered)),
                "agg_update_norm": float(np.linalg.norm(delta.astype(np.float64))),
                "agg_selected": float(len(outcome.included)),
            }
        metrics["secagg_seconds"] = pending.seconds + time.perf_counter() - start
        metrics["secagg_key_exchange_seconds"] = pending.key_exchange_seconds
        return weights_next, metrics

    def _delta(self, outcome: SecAggResult, private: PrivateStep | None) -> np.ndarray:
        """The round's aggregated update from the unmasked sum (float32)."""
        if private is None:
            return outcome.mean  # sum_k w_k x_k / sum_k w_k over U3
        total = outcome.total
        if private.config.mode == "central":
            total = add_central_noise(total, private.config, private.noise_multiplier, private.rng)
        return (total / private.sampled).astype(np.float32)

    def _server_step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """w + server step, with the aggregator actor's optimizer state (read, step, write)."""
        optimizer = ServerOptimizer(self.aggregation)
        optimizer.load_state(ray.get(self.aggregator.state.remote()))
        stepped = optimizer.step(weights, delta)
        ray.get(self.aggregator.load_state.remote(optimizer.state()))
        return stepped

    # ------------------------------------------------------------ helpers

    def _mask_weights(
        self, summaries: Mapping[int, SecureTrained], members: Iterable[int]
    ) -> dict[int, float]:
        """Public weights: n_k / sum over U2 (FedAvg); 1 under DP (the sum, then / m)."""
        members = list(members)
        if self.equal_weights:
            return dict.fromkeys(members, 1.0)
        total = sum(summaries[k].num_samples for k in members)
        if total <= 0:
            return dict.fromkeys(members, 1.0 / max(len(members), 1))
        return {k: summaries[k].num_samples / total for k in members}

    def _malformed(self, masked: MaskedInput, k: int, t: int, weight: float) -> str | None:
        if masked.sender != k or masked.round != t:
            return f"masked input names client {masked.sender}, round {masked.round}"
        if masked.masked.dtype != np.uint32 or masked.masked.shape != (self.num_params,):
            return f"masked input is {masked.masked.dtype}{masked.masked.shape}, not uint32"
        if masked.weight != weight:
            return f"masked with weight {masked.weight}, not the public {weight}"
        return None

    def _stage(
        self,
        pending: _Pending,
        method: str,
        clients: Iterable[int],
        args: Callable[[list[int]], tuple],
        lost: dict[int, str],
    ) -> dict[int, Any]:
        """One protocol step for `clients`, one call per runner holding them.

        Returns client -> its message; a client whose step failed, or whose runner died or
        missed the deadline, goes into `lost` with the reason.
        """
        by_slot: dict[int, list[int]] = {}
        for k in sorted(clients):
            by_slot.setdefault(pending.slots[k], []).append(k)
        answers, failed = self.pool.call_slots(
            method, {slot: args(ks) for slot, ks in by_slot.items()}, self.timeout_s
        )
        out: dict[int, Any] = {}
        stage = method.removeprefix("secure_")
        for slot, ks in by_slot.items():
            if slot in failed:
                lost.update({k: f"{stage}: runner failed: {failed[slot]}" for k in ks})
                continue
            for k in ks:
                answer = answers[slot].get(k, "no answer")
                if isinstance(answer, str):
                    lost[k] = f"{stage}: {answer}"
                else:
                    out[k] = answer
        return out

    def _end(self, pending: _Pending) -> None:
        """Every runner of the round drops its state (a dead runner holds none)."""
        slots = sorted(set(pending.slots.values()))
        if slots:
            self.pool.call_slots(
                "secure_end", {slot: (pending.round,) for slot in slots}, self.timeout_s
            )

    def _record_abort(
        self,
        failure: SecAggFailure,
        pending: _Pending,
        result: RoundResult,
        lost: Mapping[int, str],
    ) -> None:
        """A failure for every sampled client: its own reason if it failed the unmask step,
        else the abort's; the round applied nothing."""
        result.failures.extend(_failure(k, pending.round, why) for k, why in lost.items())
        why = (
            f"secure aggregation aborted at {failure.stage}: {failure.reason} "
            f"({failure.available} clients, threshold {failure.threshold}); "
            "the round left the model unchanged"
        )
        failed = {f.client_id for f in result.failures}
        result.failures.extend(
            _failure(k, pending.round, why, prefix=False)
            for k in pending.participants
            if k not in failed
        )
        result.failures.sort(key=lambda f: f.client_id)


def _failure(client_id: int, round_: int, why: str, *, prefix: bool = True) -> ClientFailure:
    reason = f"secure aggregation: {why}" if prefix else why
    return ClientFailure(client_id=client_id, round=round_, reason=reason[:500])


def start_secure_round(
    config,
    pool: ClientPool,
    aggregator: Any,
    *,
    master_secret: bytes,
    backend: str | None,
    num_params: int,
    keeper: Any = None,
) -> SecureRound | None:
    """The run's `SecureRound` when `config.secagg.enabled`, else None.

    `config` is the `ExperimentConfig`; `backend` the ledger's resolved signature backend
    (None without a ledger: `config.ledger.backend` is resolved); `keeper` the run's
    `LedgerKeeperActor` (None without a ledger): rosters then take the clients' keys from
    its Genesis, which must register KEM keys (`register_kem_keys`).
    """
    if not config.secagg.enabled:
        return None
    keys = None
    if keeper is not None:
        genesis = ray.get(keeper.genesis.remote(), timeout=config.ray.round_timeout_s)
        keys = RosterKeys.from_genesis(genesis)
    return SecureRound(
        config.secagg,
        pool,
        aggregator,
        aggregation=config.aggregation,
        privacy=config.privacy,
        master_secret=master_secret,
        backend=backend or config.ledger.backend,
        num_params=num_params,
        timeout_s=config.ray.round_timeout_s,
        keys=keys,
    )
