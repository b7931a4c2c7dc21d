"""Driver-side handle on the client-runner actors: dispatch a round, collect, time out.

A round's tasks are planned onto the runners up front (longest first, by the
clients' data sizes: `federated.client.balance`) and submitted at once, in a
few batches per runner, so each runner's queue is full from the start; the
batches are collected as they finish, until the round deadline. A client whose
training raises, a runner that dies, or a batch still unanswered at the
deadline becomes a `ClientFailure` per client: failures are data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.client_runner import ClientRunnerActor
from federated.client import (
    SecAggSpec,
    SecureTrained,
    SecureTrainedBatch,
    balance,
    batch_plan,
)
from federated.config import ModelConfig, TrainConfig
from federated.data import FederatedData
from federated.messages import ClientFailure, ClientTask, ClientUpdate, TrainedBatch, error_reason
from ledger.keeper import SigningSpec


@dataclass
class RoundResult:
    """What came back from one round's dispatch, in client-id order."""

    updates: list[ClientUpdate] = field(default_factory=list)
    failures: list[ClientFailure] = field(default_factory=list)
    # the runners' answers in the store (`TrainedBatch`es) that hold exactly `updates`,
    # for the keeper and the aggregator to read; empty once `updates` is filtered
    parts: list[ray.ObjectRef] = field(default_factory=list)


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
        on_part: Callable[[ray.ObjectRef], None] | None = None,
    ) -> RoundResult:
        """Train every task's client from `weights_ref`; never raises for a client's fault.

        Each runner gets its clients in a few batches (`federated.client.batch_plan`),
        not one call per client: a call costs the driver, Ray and the runner far more
        than a small model's local training. `during` runs in the driver once every
        batch is submitted, while they train. A batch answered in full is a part of
        the round (`RoundResult.parts`): `on_part` gets its object ref at once (e.g. to
        have it validated while the rest train). The result is in client-id order.
        """
        submitted, _ = self._submit("train_batch", weights_ref, tasks, costs)
        if during is not None:
            during()
        return self._gather(submitted, timeout_s, on_part)

    def _gather(
        self,
        submitted: dict[ray.ObjectRef, list[ClientTask]],
        timeout_s: float,
        on_part: Callable[[ray.ObjectRef], None] | None,
    ) -> RoundResult:
        """Collect the batches as they finish; those unanswered at the deadline fail.

        A batch that raised (its runner died) fails all its clients; one still running at
        the deadline fails all its clients too, including any it had already trained.
        """
        deadline = time.monotonic() + timeout_s
        pending, result = list(submitted), RoundResult()
        while pending and (remaining := deadline - time.monotonic()) > 0:
            ready, pending = ray.wait(pending, timeout=remaining, fetch_local=False)
            for ref in ready:
                try:
                    batch: TrainedBatch | SecureTrainedBatch = ray.get(ref, timeout=60)
                except (RayTaskError, RayActorError, GetTimeoutError) as exc:
                    result.failures += [_failure(task, _reason(exc)) for task in submitted[ref]]
                    continue
                result.updates += batch.updates
                result.failures += batch.failures
                if batch.updates:
                    result.parts.append(ref)
                    if on_part is not None:
                        on_part(ref)
        for ref in pending:
            ray.cancel(ref)
            reason = f"no answer within the round timeout ({timeout_s}s)"
            result.failures += [_failure(task, reason) for task in submitted[ref]]
        result.updates.sort(key=lambda u: u.client_id)
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
        submitted, slots = self._submit(
            "secure_train_batch", weights_ref, tasks, costs, roster, spec
        )
        result = self._gather(submitted, timeout_s, None)
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
    ) -> tuple[dict[ray.ObjectRef, list[ClientTask]], dict[int, int]]:
        """Plan the tasks onto the runners (`balance`) and submit them all at once, in
        batches (`batch_plan`): each batch's call -> its tasks, and client id -> runner."""
        plan = balance(costs if costs is not None else [1.0] * len(tasks), len(self.actors))
        submitted, slots = {}, {}
        for slot, batch in batch_plan(plan, len(self.actors)):
            batch_tasks = [tasks[i] for i in batch]
            call = getattr(self.actors[slot], method).remote(weights_ref, batch_tasks, *extra)
            submitted[call] = batch_tasks
            slots |= {task.client_id: slot for task in batch_tasks}
        return submitted, slots


def _failure(task: ClientTask, reason: str) -> ClientFailure:
    return ClientFailure(client_id=task.client_id, round=task.round, reason=reason)


def _reason(exc: Exception) -> str:
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        return error_reason(exc.cause)
    return error_reason(exc)
