"""A client runner: serves any number of virtual clients from one copy of the data.

A runner holds the federated dataset (shared, read-only) and one model
instance; `run(task, weights)` trains the task's client from the global
weights. Thousands of registered clients therefore cost one model and no data
copies per runner; a client's local data is sliced only while it trains.

Paths (DESIGN.md, "The hybrid model"). A task's path is the scheduler's
assignment (Eq. 9). On the classical path the model's quantum layer, if any, is
evaluated by exact simulation (the runner's base model). On the quantum path it
runs on the task's quantum resource (its executor, noise and shots, built once
per resource state and cached). A quantum job that fails (the resource's
simulated failure, an executor error), runs past its timeout, or fails the
hybrid cross-check (`federated.crosscheck`: the update against the exact
gradient and the exact probe loss) is recomputed classically and returned with
``path="fallback"`` and the reason, which the ledger records.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from federated.attacks import AttackConfig, attack_rng, corrupt_delta, poison_data
from federated.config import ModelConfig, TrainConfig
from federated.crosscheck import CrossCheckConfig, cross_check
from federated.data import ArrayDataset, FederatedData
from federated.messages import ClientFailure, ClientTask, ClientUpdate, TrainedBatch, error_reason
from federated.models import (
    build_model,
    quantum_overhead,
    reseed,
    set_flat,
    set_layers_active,
    trained_mask,
)
from federated.privacy import PrivacyConfig, clip_update, noise_rng, privatize_local
from federated.secagg import (
    KeyExchange,
    MaskedInput,
    Roster,
    SecAggClient,
    SecAggError,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
    digest_carrier,
    kem_seed,
    masked_digest,
    round_secret,
)
from federated.train import LocalResult, local_train
from ledger.crypto import Signer, Verifier
from ledger.keeper import SigningSpec, client_signer, sign_update, update_nonce
from ledger.records import Update, UpdatePath
from qfl.errors import QflError, QuantumError, TrainingError
from quantum.config import MitigationConfig
from quantum.executors.base import Overhead

SIGNER_CACHE = 4096  # ML-DSA-65 signers kept per runner (a few KB each)
QUANTUM_MODELS = 4  # quantum-path models (one per resource state) kept per runner


def update_noise_variance(shots: int | None, lr: float, steps: int, fidelity: float = 1.0) -> float:
    """Per-parameter variance of the quantum noise in an update, relative to its signal.

    A parameter-shift gradient entry is (E+ - E-) / 2 with each expectation estimated
    from `shots` shots, Var(E) <= 1 / shots, so Var(g) <= 1 / (2 shots); plain SGD sums
    `steps` independent such estimates times the learning rate, so
    Var(Delta) <= lr^2 * steps / (2 shots). Device noise damps every expectation by the
    circuit fidelity F (global-depolarizing approximation, as in Eq. 2's penalty) while
    shot noise stays, so at equal signal the variance grows by 1 / F^2:

        sigma^2 = lr^2 * steps / (2 * shots * F^2)

    0 for exact simulation (`shots` None). An upper bound that ignores momentum; the
    hybrid rule (Eq. 6-7) needs only its scale across clients.
    """
    if shots is None:
        return 0.0
    f = max(fidelity, 1e-6)
    return lr * lr * steps / (2.0 * shots * f * f)


class LocalPrivacy(BaseModel):
    """Local differential privacy of a runner's clients: the mechanism, z, the noise key."""

    model_config = ConfigDict(frozen=True)

    config: PrivacyConfig
    noise_multiplier: float = Field(ge=0.0)
    master_secret: bytes  # seeds each client's noise (`federated.privacy.noise_rng`)


class SecAggSpec(BaseModel):
    """What a runner needs for secure aggregation: the key root, the backend, the scale.

    master_secret derives each client's ML-KEM key (`federated.secagg.kem_seed`), its
    ML-DSA-65 key (`ledger.keeper.client_signer`, the key registered on the ledger) and its
    round secret. clip: central DP's C; clients clip before masking (the server cannot).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    master_secret: bytes
    backend: Literal["liboqs", "cryptography"]
    scale: float = Field(gt=0.0)
    clip: float | None = Field(None, gt=0.0)


class SecureTrained(BaseModel):
    """A client's answer to secure step 1: how training went (no update) and its key exchange."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    client_id: int
    round: int
    num_samples: int = Field(ge=0)
    loss: float
    seconds: float = Field(ge=0.0)
    path: UpdatePath = "classical"
    fallback_reason: str | None = None
    noise_variance: float = Field(0.0, ge=0.0)
    resource: str | None = None
    probe_gain: float | None = None
    exchange: KeyExchange
    exchange_seconds: float = Field(0.0, ge=0.0)  # key generation, encapsulation, signing

    def update(self, delta: np.ndarray, record: Update | None, sign_seconds: float) -> ClientUpdate:
        """The `ClientUpdate` the ledger and the round record see, with `delta` standing in."""
        return ClientUpdate(
            client_id=self.client_id,
            round=self.round,
            num_samples=self.num_samples,
            loss=self.loss,
            delta=delta,
            seconds=self.seconds,
            record=record,
            sign_seconds=sign_seconds,
            path=self.path,
            fallback_reason=self.fallback_reason,
            noise_variance=self.noise_variance,
            resource=self.resource,
            probe_gain=self.probe_gain,
        )


class SecureTrainedBatch(BaseModel):
    """A runner's answer to a batch of secure step 1s (the `TrainedBatch` of a secure round)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    updates: tuple[SecureTrained, ...] = ()
    failures: tuple[ClientFailure, ...] = ()


class SecureMasked(BaseModel):
    """A client's answer to secure step 3: its masked input, signed for the ledger."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    masked: MaskedInput
    record: Update | None = None  # signs digest_carrier(masked_digest(masked)); None: no ledger
    sign_seconds: float = Field(0.0, ge=0.0)
    seconds: float = Field(0.0, ge=0.0)  # decrypting shares and masking


@dataclass
class _Trained:
    """A client's local result before anything leaves the runner."""

    result: LocalResult
    delta: np.ndarray
    path: UpdatePath
    reason: str | None
    noise_variance: float
    gain: float | None


@dataclass
class _Session:
    """One client's secure-aggregation state in one round, on the runner that trained it."""

    task: ClientTask
    trained: _Trained
    delta: np.ndarray | None  # the clipped update until it is masked, then dropped
    client: SecAggClient


def mitigation_variance_factor(mitigation: MitigationConfig) -> float:
    """How much error mitigation multiplies the shot-noise variance of an estimate.

    Zero-noise extrapolation estimates E(0) = sum_j c_j E(lambda_j) from independent
    estimates at the scale factors, each with the unmitigated shot variance, so the
    variance grows by sum_j c_j^2 (Richardson or least-squares-line weights; an
    exponential fit is taken as Richardson's). Readout and parity mitigation are
    counted as 1: their effect on the variance is small next to ZNE's.
    """
    if "zne" not in mitigation.techniques:
        return 1.0
    # imported here: qiskit loads only in runners that train a quantum model
    from quantum.mitigation import linear_weights, richardson_weights

    scales = mitigation.scale_factors
    if mitigation.extrapolation == "linear":
        weights = linear_weights(scales)
    else:
        weights = richardson_weights(scales)
    return float(np.sum(np.square(weights)))


def _fidelity(model: nn.Module) -> float:
    """The circuit fidelity of the model's quantum layer on its noise model (1 if none)."""
    from quantum.layer import QuantumLayer  # here: a classical runner never loads qiskit

    for module in model.modules():
        if isinstance(module, QuantumLayer):
            return float(module.fidelity)
    return 1.0


class ClientRunner:
    """Trains virtual clients of `data` with one reusable model per path."""

    def __init__(
        self,
        data: FederatedData,
        model: ModelConfig,
        train: TrainConfig,
        prox_mu: float = 0.0,
        quantum=None,
        signing: SigningSpec | None = None,
        *,
        attack: AttackConfig | None = None,
        attackers: frozenset[int] = frozenset(),
        crosscheck: CrossCheckConfig | None = None,
        quantum_timeout_s: float | None = None,
        seed: int = 0,
        local_dp: LocalPrivacy | None = None,
    ):
        self._data = data
        self._signing = signing
        # keygen costs more than a signature: keep the signers of recently seen clients
        self._signer = functools.lru_cache(maxsize=SIGNER_CACHE)(self._derive_signer)
        self._train = train
        self._prox_mu = prox_mu
        self._model_config = model
        self._attack = attack or AttackConfig()
        self._attackers = frozenset(attackers)
        self._crosscheck = crosscheck
        self._timeout = quantum_timeout_s
        self._seed = seed
        self._local_dp = local_dp
        self._model = self._build(quantum)
        self._quantum_models: OrderedDict[object, nn.Module] = OrderedDict()
        self._overhead = Overhead()  # quantum circuits and shots of the last training
        self._trained_mask: np.ndarray | None = None
        # secure aggregation: the open round's per-client state, dropped when it ends
        self._secagg_signers = functools.lru_cache(maxsize=SIGNER_CACHE)(client_signer)
        self._verifiers: dict[str, Verifier] = {}
        self._secure_round: int | None = None
        self._sessions: dict[int, _Session] = {}

    def _build(self, quantum) -> nn.Module:
        data = self._data
        return build_model(
            self._model_config, data.input_shape, data.num_classes, seed=0, quantum=quantum
        )

    def run(self, task: ClientTask, weights: np.ndarray) -> ClientUpdate:
        """Train client `task.client_id` from `weights` on its path; return its update."""
        trained = self._compute(task, weights)
        result, delta, path = trained.result, trained.delta, trained.path
        start = time.perf_counter()
        record = None if self._signing is None else self._sign(task, result, delta, path)
        return ClientUpdate(
            client_id=task.client_id,
            round=task.round,
            num_samples=result.num_samples,
            loss=result.loss,
            delta=delta,
            seconds=result.seconds,
            record=record,
            sign_seconds=time.perf_counter() - start if record is not None else 0.0,
            path=path,
            fallback_reason=trained.reason,
            noise_variance=trained.noise_variance,
            resource=task.resource,
            probe_gain=trained.gain,
            circuits=self._overhead.circuits,
            shots=self._overhead.shots,
            extra_circuits=max(0, self._overhead.extra_circuits),
            extra_shots=max(0, self._overhead.extra_shots),
            trained=self._trained_mask,
        )

    def _compute(self, task: ClientTask, weights: np.ndarray) -> _Trained:
        """Train on the task's path, attack if an attacker, noise if local DP; no signing."""
        if not 0 <= task.client_id < len(self._data.client_indices):
            raise TrainingError(f"client {task.client_id} is not registered")
        data = self._client_data(task.client_id)
        self._trained_mask = None  # set by a quantum update that trained fewer layers
        path, reason, noise_variance = "classical", None, 0.0
        if task.fallback is not None:  # planned quantum, but its resource was not available
            path, reason = "fallback", task.fallback
        result = None
        if task.path == "quantum":
            try:
                result, noise_variance = self._quantum_update(task, data, weights)
                path = "quantum"
            except QuantumError as exc:
                path, reason = "fallback", error_reason(exc)
        if result is None:
            result = self._local_train(self._model, task, data, weights)
        gain = self._probe_gain(data, weights, result.delta) if task.probe else None
        delta = result.delta
        if task.client_id in self._attackers and self._attack.corrupts_update:
            rng = attack_rng(task.seed)
            delta = corrupt_delta(delta, self._attack, rng)
        if self._local_dp is not None:  # local DP: clip and noise before anything leaves
            dp = self._local_dp
            rng = noise_rng(dp.master_secret, task.round, task.client_id)
            delta = privatize_local(delta, dp.config, dp.noise_multiplier, rng)
        return _Trained(result, delta, path, reason, noise_variance, gain)

    def _client_data(self, client_id: int) -> ArrayDataset:
        data = self._data.client(client_id)
        if client_id in self._attackers:
            data = poison_data(data, self._attack, self._data.num_classes)
        return data

    def _local_train(
        self, model: nn.Module, task: ClientTask, data: ArrayDataset, weights: np.ndarray
    ) -> LocalResult:
        reseed(model, task.seed)
        before = quantum_overhead(model)
        result = local_train(
            model, data, weights, self._train, seed=task.seed, prox_mu=self._prox_mu
        )
        self._overhead = quantum_overhead(model) - before  # what this training ran
        return result

    def _quantum_update(
        self, task: ClientTask, data: ArrayDataset, weights: np.ndarray
    ) -> tuple[LocalResult, float]:
        """Train on the task's quantum resource; raise QuantumError when it must fall back."""
        if task.job_failure is not None:
            raise QuantumError(task.job_failure)
        if task.quantum is None:
            raise QuantumError(f"quantum task of client {task.client_id} names no quantum config")
        model = self._quantum_model(task.quantum)
        if task.layers_active is None:
            result = self._local_train(model, task, data, weights)
        else:  # a shallower device: its truncated circuit; no delta for the other layers
            set_layers_active(model, task.layers_active)
            try:
                result = self._local_train(model, task, data, weights)
                mask = trained_mask(model)
            finally:
                set_layers_active(model, None)
            delta = np.where(mask, result.delta, 0.0).astype(np.float32)
            result = result.model_copy(update={"delta": delta})
            self._trained_mask = mask
        if self._timeout is not None and result.seconds > self._timeout:
            raise QuantumError(
                f"quantum job ran {result.seconds:.1f}s, past its {self._timeout}s timeout"
            )
        if not np.isfinite(result.delta).all():
            raise QuantumError("quantum update has non-finite entries")
        if self._crosscheck is not None:
            self._check_against_exact(data, weights, result.delta)
        steps = self._train.epochs * math.ceil(result.num_samples / self._train.batch_size)
        variance = update_noise_variance(
            task.quantum.shots, self._train.lr, steps, _fidelity(model)
        )
        return result, variance * mitigation_variance_factor(task.quantum.mitigation)

    def _quantum_model(self, quantum) -> nn.Module:
        model = self._quantum_models.get(quantum)
        if model is None:
            model = self._build(quantum)
            self._quantum_models[quantum] = model
            if len(self._quantum_models) > QUANTUM_MODELS:
                self._quantum_models.popitem(last=False)
        else:
            self._quantum_models.move_to_end(quantum)
        return model

    def _probe(self, data: ArrayDataset) -> tuple[torch.Tensor, torch.Tensor]:
        n = self._crosscheck.probe_batch if self._crosscheck is not None else 64
        return torch.as_tensor(data.x[:n]), torch.as_tensor(data.y[:n])

    def _probe_loss(self, data: ArrayDataset, weights: np.ndarray, grad: bool = False):
        """Exact loss of `weights` on the probe batch; with `grad`, also -dL/dw (flat)."""
        x, y = self._probe(data)
        set_flat(self._model, weights)
        self._model.eval()
        with torch.set_grad_enabled(grad):
            loss = nn.functional.cross_entropy(self._model(x), y)
        if not grad:
            return float(loss), None
        params = list(self._model.parameters())  # state_dict order: get_flat's order
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        parts = [
            (-g if g is not None else torch.zeros_like(p)).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
        flat = torch.cat(parts)
        return float(loss), flat.detach().numpy().astype(np.float32)

    def _probe_gain(self, data: ArrayDataset, weights: np.ndarray, delta: np.ndarray) -> float:
        """L(w_t) - L(w_t + delta) on the probe batch, by exact simulation."""
        before, _ = self._probe_loss(data, weights)
        after, _ = self._probe_loss(data, weights + delta)
        return before - after

    def _check_against_exact(self, data: ArrayDataset, weights: np.ndarray, delta) -> None:
        baseline, reference = self._probe_loss(data, weights, grad=True)
        probe_loss, _ = self._probe_loss(data, weights + delta)
        verdict = cross_check(
            delta,
            self._crosscheck,
            reference=reference,
            probe_loss=probe_loss,
            baseline_loss=baseline,
        )
        if verdict.suspect:
            raise QuantumError(f"cross-check flagged the quantum update: {verdict.reason}")

    def _sign(self, task: ClientTask, result: LocalResult, delta: np.ndarray, path: str) -> Update:
        spec = self._signing
        return sign_update(
            run_id=spec.run_id,
            master_secret=spec.master_secret,
            client_id=task.client_id,
            round_=task.round,
            nonce=update_nonce(spec.master_secret, task.round, task.client_id),
            delta=delta,
            num_examples=result.num_samples,
            path=path,
            metrics={"loss": result.loss},
            backend=spec.backend,
            signer=self._signer(task.client_id),
        )

    def _derive_signer(self, client_id: int) -> Signer:
        spec = self._signing
        return client_signer(
            spec.master_secret, client_id, spec.backend, deterministic=spec.deterministic
        )

    # ------------------------------------------------------------ secure aggregation
    #
    # A round is four calls (pipelines/secure_round.py drives them): `secure_train` per
    # client, then `secure_share`, `secure_mask`, `secure_unmask` batched over this
    # runner's clients. A client's state (its update, its `SecAggClient`) stays on the
    # runner that trained it for the whole round and is dropped when the round ends
    # (`secure_end`, or the first call of a later round). A client's failure in a batched
    # step is returned as its reason: that client drops out, the others go on.

    @property
    def secure_sessions(self) -> int:
        """How many clients' secure-aggregation state this runner holds."""
        return len(self._sessions)

    def secure_train(
        self, task: ClientTask, weights: np.ndarray, roster: Roster, spec: SecAggSpec
    ) -> SecureTrained:
        """Secure step 1: train; keep the update here; answer with the signed key exchange.

        The update leaves this runner only masked (`secure_mask`). With central DP
        (`spec.clip`) it is clipped to C first: the server can no longer clip it.
        """
        self._begin_secure(task.round)
        self._sessions.pop(task.client_id, None)
        trained = self._compute(task, weights)
        delta = trained.delta
        if spec.clip is not None:
            delta = clip_update(delta, spec.clip)
        start = time.perf_counter()
        k = task.client_id
        client = SecAggClient(
            k,
            roster,
            kem_seed=kem_seed(spec.master_secret, k),
            signer=self._secagg_signer(spec, k),
            secret=round_secret(spec.master_secret, k, task.round),
            scale=spec.scale,
            verifier=self._verifier(spec.backend),
        )
        exchange = client.key_exchange()
        self._sessions[k] = _Session(task, trained, delta, client)
        result = trained.result
        return SecureTrained(
            client_id=k,
            round=task.round,
            num_samples=result.num_samples,
            loss=result.loss,
            seconds=result.seconds,
            path=trained.path,
            fallback_reason=trained.reason,
            noise_variance=trained.noise_variance,
            resource=task.resource,
            probe_gain=trained.gain,
            exchange=exchange,
            exchange_seconds=time.perf_counter() - start,
        )

    def secure_share(
        self, round_: int, exchanges: Sequence[KeyExchange], clients: Sequence[int]
    ) -> dict[int, ShareBundle | str]:
        """Secure step 2 for `clients`: each one's encrypted Shamir shares, or why it failed."""
        return self._each(round_, clients, lambda s: s.client.share_keys(exchanges))

    def secure_mask(
        self,
        round_: int,
        deliveries: Mapping[int, ShareDelivery],
        weights: Mapping[int, float],
    ) -> dict[int, SecureMasked | str]:
        """Secure step 3: each client's masked input (its update scaled by its public weight),
        signed for the ledger when the run has one; the plain update is dropped."""

        def mask(session: _Session) -> SecureMasked:
            k = session.task.client_id
            if session.delta is None:
                raise SecAggError(f"client {k} has already masked its update")
            size = session.delta.size
            start = time.perf_counter()
            masked = session.client.mask(deliveries[k], session.delta, weights[k])
            seconds = time.perf_counter() - start
            session.delta = None  # from here on only the masked input exists
            if self._signing is None:
                return SecureMasked(masked=masked, seconds=seconds)
            start = time.perf_counter()
            carrier = digest_carrier(masked_digest(masked), size)
            record = self._sign(session.task, session.trained.result, carrier, session.trained.path)
            return SecureMasked(
                masked=masked,
                record=record,
                sign_seconds=time.perf_counter() - start,
                seconds=seconds,
            )

        return self._each(round_, list(deliveries), mask)

    def secure_unmask(
        self, round_: int, request: UnmaskRequest, clients: Sequence[int]
    ) -> dict[int, UnmaskResponse | str]:
        """Secure step 4: each client's shares for the server; its state is dropped after."""
        out = self._each(round_, clients, lambda s: s.client.unmask(request))
        for k in clients:
            self._sessions.pop(k, None)
        return out

    def secure_end(self, round_: int) -> None:
        """Drop every client's state of `round_` (and of earlier rounds)."""
        if self._secure_round is not None and round_ >= self._secure_round:
            self._sessions.clear()

    def _begin_secure(self, round_: int) -> None:
        """Enter round `round_`: drop an earlier round's state; refuse a finished round."""
        if self._secure_round is not None and round_ < self._secure_round:
            raise SecAggError(f"round {round_} is over: this runner is in {self._secure_round}")
        if round_ != self._secure_round:
            self._sessions.clear()
            self._secure_round = round_

    def _each(self, round_: int, clients: Sequence[int], step) -> dict:
        """`step(session)` for each client; a client's qfl error becomes its reason (dropped)."""
        out: dict[int, object] = {}
        for k in clients:
            try:
                session = self._sessions.get(k) if round_ == self._secure_round else None
                if session is None:
                    raise SecAggError(f"client {k} has no secure state in round {round_}")
                out[k] = step(session)
            except QflError as exc:
                self._sessions.pop(k, None)
                out[k] = error_reason(exc)
        return out

    def _secagg_signer(self, spec: SecAggSpec, client_id: int) -> Signer:
        """The client's ML-DSA-65 key (the one on the ledger), cached."""
        signing = self._signing
        if (
            signing is not None
            and signing.master_secret == spec.master_secret
            and signing.backend == spec.backend
        ):
            return self._signer(client_id)
        return self._secagg_signers(spec.master_secret, client_id, spec.backend)

    def _verifier(self, backend: str) -> Verifier:
        verifier = self._verifiers.get(backend)
        if verifier is None:
            verifier = self._verifiers[backend] = Verifier(backend)
        return verifier


Answer = TypeVar("Answer")  # what a client's step returns (an update, a secure step 1)


def run_each(
    tasks: Sequence[ClientTask], step: Callable[[ClientTask], Answer]
) -> tuple[tuple[Answer, ...], tuple[ClientFailure, ...]]:
    """`step` each task in turn: (the answers, the clients whose step raised).

    One client's fault (an unregistered id, a quantum job that cannot fall back, a
    bug) must not cost the others of its batch their answers.
    """
    answers, failures = [], []
    for task in tasks:
        try:
            answers.append(step(task))
        except Exception as exc:  # noqa: BLE001 - any client error is recorded, not raised
            reason = error_reason(exc)
            failures.append(
                ClientFailure(client_id=task.client_id, round=task.round, reason=reason)
            )
    return tuple(answers), tuple(failures)


def train_batch(
    tasks: Sequence[ClientTask], train: Callable[[ClientTask], ClientUpdate]
) -> TrainedBatch:
    """`train` each task in turn (`run_each`): a runner's answer to a batch."""
    updates, failures = run_each(tasks, train)
    return TrainedBatch(updates=updates, failures=failures)


def batch_sizes(n: int) -> list[int]:
    """Split a runner's `n` queued tasks into batches of halving size (50: 25, 13, 6, 3, 2, 1).

    Few calls (about log2 n + 1 instead of n), and a small last batch: what is admitted
    after the round's training ends, while the runners wait, is only its few updates.
    """
    sizes = []
    while n > 0:
        sizes.append(-(-n // 2) if n > 1 else 1)
        n -= sizes[-1]
    return sizes


def batch_plan(plan: Sequence[int], workers: int) -> list[tuple[int, list[int]]]:
    """The batches of a `balance` plan: (worker, task indices), in submission order.

    Each worker's tasks keep their order in `plan` and are cut by `batch_sizes`; the
    workers' batches interleave, so that every queue fills at once.
    """
    queues: list[list[int]] = [[] for _ in range(workers)]
    for i in sorted(range(len(plan)), key=lambda i: plan[i]):
        queues[plan[i]].append(i)
    per_worker = []
    for worker, queue in enumerate(queues):
        cuts, start = [], 0
        for size in batch_sizes(len(queue)):
            cuts.append((worker, queue[start : start + size]))
            start += size
        per_worker.append(cuts)
    return [b for level in itertools.zip_longest(*per_worker) for b in level if b is not None]


def balance(costs: Sequence[float], workers: int) -> list[int]:
    """Assign tasks to `workers` by longest-processing-time-first; returns a worker per task.

    Greedy LPT (Graham 1969): tasks in decreasing cost go to the least-loaded
    worker, ties to the lowest index, so the plan is deterministic and its
    makespan is within 4/3 of optimal.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    loads = [(0.0, w) for w in range(workers)]
    heapq.heapify(loads)
    plan = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, worker = heapq.heappop(loads)
        plan[i] = worker
        heapq.heappush(loads, (load + costs[i], worker))
    return plan
