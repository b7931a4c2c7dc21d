"""Driver-side handle on the client-runner actors: dispatch a round, collect, time out.

A round's tasks are planned onto the runners up front (longest first, by the
clients' data sizes: `federated.client.balance`) and submitted at once, so
each runner's queue is full from the start; one `ray.wait` with the round
deadline collects them. A task that raises, a runner that dies, or a client
still unanswered at the deadline becomes a `ClientFailure`: failures are data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.client_runner import ClientRunnerActor
from federated.client import SecAggSpec, SecureTrained, balance
from federated.data import FederatedData
from federated.messages import ClientFailure, ClientTask, ClientUpdate
from federated.models import ModelConfig
from federated.train import TrainConfig
from ledger.keeper import SigningSpec


@dataclass
class RoundResult:
    """What came back from one round's dispatch, in client-id order."""

    updates: list[ClientUpdate] = field(default_factory=list)
    refs: list[ray.ObjectRef] = field(default_factory=list)  # same order as updates
    failures: list[ClientFailure] = field(default_factory=list)


class ClientPool:
    """A fixed set of runner actors serving all virtual clients."""

    def __init__(
        self,
        data_ref: ray.ObjectRef,
        model: ModelConfig,
        train: TrainConfig,
        *,
        runners: int,
        num_cpus: float,
        prox_mu: float = 0.0,
        torch_threads: int = 1,
        quantum=None,
        signing: SigningSpec | None = None,
        num_gpus: float = 0.0,
        **runner_options,
    ):
        """`runner_options` go to `ClientRunner` (attack, attackers, crosscheck, ...)."""
        self._data_ref = data_ref  # keep the shared dataset alive as long as the runners
        options = ClientRunnerActor.options(num_cpus=num_cpus, num_gpus=num_gpus)
        self.actors = [
            options.remote(
                data_ref, model, train, prox_mu, torch_threads, quantum, signing, **runner_options
            )
            for _ in range(runners)
        ]

    @classmethod
    def from_data(cls, data: FederatedData, model: ModelConfig, train: TrainConfig, **kw):
        """Put `data` in the object store once and start the runners over it."""
        return cls(ray.put(data), model, train, **kw)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every runner has been constructed (raises on timeout)."""
        ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)

    def run_round(
        self,
        weights_ref: ray.ObjectRef,
        tasks: Sequence[ClientTask],
        timeout_s: float,
        costs: Sequence[float] | None = None,
        during: Callable[[], None] | None = None,
        on_updates: Callable[[list[ClientUpdate]], None] | None = None,
        parts: int = 4,
    ) -> RoundResult:
        """Train every task's client from `weights_ref`; never raises for a client's fault.

        `during` runs in the driver once every task is submitted, while they train. With
        `on_updates`, the updates are collected in about `parts` parts as they finish,
        each passed to it at once (e.g. to be validated while the rest train); the
        result is the same, in client-id order.
        """
        submitted, _ = self._submit("train", weights_ref, tasks, costs)
        if during is not None:
            during()
        if on_updates is None:
            ready, failures = self._wait(submitted, timeout_s)
            return _collect([(submitted[ref], ref) for ref in ready], failures)
        return self._stream(submitted, timeout_s, on_updates, parts)

    def _stream(
        self,
        submitted: dict[ray.ObjectRef, ClientTask],
        timeout_s: float,
        on_updates: Callable[[list[ClientUpdate]], None],
        parts: int,
    ) -> RoundResult:
        """`_wait` and `_collect` part by part; the unanswered at the deadline fail."""
        deadline = time.monotonic() + timeout_s
        pending, size = list(submitted), max(1, -(-len(submitted) // max(1, parts)))
        result = RoundResult()
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, pending = ray.wait(
                pending, num_returns=min(size, len(pending)), timeout=remaining, fetch_local=False
            )
            part = _collect([(submitted[ref], ref) for ref in ready], [])
            result.updates += part.updates
            result.refs += part.refs
            result.failures += part.failures
            if part.updates:
                on_updates(part.updates)
        for ref in pending:
            ray.cancel(ref)
            reason = f"no answer within the round timeout ({timeout_s}s)"
            result.failures.append(_failure(submitted[ref], reason))
        order = sorted(range(len(result.updates)), key=lambda i: result.updates[i].client_id)
        result.updates = [result.updates[i] for i in order]
        result.refs = [result.refs[i] for i in order]
        result.failures.sort(key=lambda f: f.client_id)
        return result

    def train_secure(
        self,
        weights_ref: ray.ObjectRef,
        tasks: Sequence[ClientTask],
        timeout_s: float,
        costs: Sequence[float] | None,
        roster: ray.ObjectRef,
        spec: SecAggSpec,
    ) -> tuple[dict[int, tuple[int, SecureTrained]], list[ClientFailure]]:
        """Secure step 1 for every task (planned as in `run_round`): client id -> (the slot
        of the runner that now holds its state, its answer), and the failures."""
        submitted, slots = self._submit("secure_train", weights_ref, tasks, costs, roster, spec)
        ready, failures = self._wait(submitted, timeout_s)
        result = _collect([(submitted[ref], ref) for ref in ready], failures)
        trained = {u.client_id: (slots[u.client_id], u) for u in result.updates}
        return trained, result.failures

    def call_slots(
        self, method: str, calls: Mapping[int, tuple], timeout_s: float
    ) -> tuple[dict[int, Any], dict[int, str]]:
        """`method(*args)` on the runner of each slot in `calls`, at once, with one deadline.

        Returns slot -> answer for those that answered, and slot -> reason for the runners
        that raised, died or missed the deadline.
        """
        submitted = {
            getattr(self.actors[slot], method).remote(*args): slot for slot, args in calls.items()
        }
        ready, unanswered = ray.wait(
            list(submitted), num_returns=len(submitted), timeout=timeout_s, fetch_local=False
        )
        answers: dict[int, Any] = {}
        failed: dict[int, str] = {}
        for ref in unanswered:
            ray.cancel(ref)
            failed[submitted[ref]] = f"no answer within the stage timeout ({timeout_s}s)"
        for ref in ready:
            try:
                answers[submitted[ref]] = ray.get(ref, timeout=60)
            except (RayTaskError, RayActorError, GetTimeoutError) as exc:
                failed[submitted[ref]] = _reason(exc)
        return answers, failed

    def _submit(
        self,
        method: str,
        weights_ref: ray.ObjectRef,
        tasks: Sequence[ClientTask],
        costs: Sequence[float] | None,
        *extra,
    ) -> tuple[dict[ray.ObjectRef, ClientTask], dict[int, int]]:
        """Plan the tasks onto the runners (`balance`) and submit them all at once."""
        plan = balance(costs if costs is not None else [1.0] * len(tasks), len(self.actors))
        submitted = {
            getattr(self.actors[slot], method).remote(weights_ref, task, *extra): task
            for task, slot in zip(tasks, plan, strict=True)
        }
        slots = {task.client_id: slot for task, slot in zip(tasks, plan, strict=True)}
        return submitted, slots

    def _wait(
        self, submitted: dict[ray.ObjectRef, ClientTask], timeout_s: float
    ) -> tuple[list[ray.ObjectRef], list[ClientFailure]]:
        """One `ray.wait` with the round deadline; the unanswered are cancelled and failed."""
        ready, unanswered = ray.wait(
            list(submitted), num_returns=len(submitted), timeout=timeout_s, fetch_local=False
        )
        failures = []
        for ref in unanswered:
            ray.cancel(ref)
            reason = f"no answer within the round timeout ({timeout_s}s)"
            failures.append(_failure(submitted[ref], reason))
        return ready, failures


def _collect(done: list[tuple[ClientTask, ray.ObjectRef]], failures: list[ClientFailure]):
    """Fetch the finished tasks' answers (updates, or secure step-1 answers) in one call;
    on any error, one by one.

    A single `ray.get` over all refs costs one round trip instead of one per client; when
    it raises (a client's task failed, an actor died), the per-ref pass finds which.
    """
    result = RoundResult(failures=failures)
    done = sorted(done, key=lambda item: item[0].client_id)
    try:
        updates = ray.get([ref for _, ref in done], timeout=60)
    except (RayTaskError, RayActorError, GetTimeoutError):
        updates = None
    for i, (task, ref) in enumerate(done):
        if updates is not None:
            update = updates[i]
        else:
            try:
                update = ray.get(ref, timeout=60)
            except (RayTaskError, RayActorError, GetTimeoutError) as exc:
                result.failures.append(_failure(task, _reason(exc)))
                continue
        result.updates.append(update)
        result.refs.append(ref)
    result.failures.sort(key=lambda f: f.client_id)
    return result


def _failure(task: ClientTask, reason: str) -> ClientFailure:
    return ClientFailure(client_id=task.client_id, round=task.round, reason=reason)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RayTaskError):
        cause = exc.cause if exc.cause is not None else exc
        return f"{type(cause).__name__}: {cause}"[:500]
    return f"{type(exc).__name__}: {exc}"[:500]
