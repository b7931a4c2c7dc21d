"""Driver-side handle on the client-runner actors: dispatch a round, collect, time out.

The pool keeps at most `in_flight` tasks queued on each runner and feeds the
next client to whichever runner finishes first: one `ray.wait` loop, visible
here, with the round deadline applied to it. A task that raises, a runner that
dies, or a client still running at the deadline becomes a `ClientFailure`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.client_runner import ClientRunnerActor
from federated.data import FederatedData
from federated.messages import ClientFailure, ClientTask, ClientUpdate
from federated.models import ModelConfig
from federated.train import TrainConfig


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
        in_flight: int = 2,
    ):
        options = ClientRunnerActor.options(num_cpus=num_cpus)
        self.actors = [
            options.remote(data_ref, model, train, prox_mu, torch_threads) for _ in range(runners)
        ]
        self._in_flight = in_flight

    @classmethod
    def from_data(cls, data: FederatedData, model: ModelConfig, train: TrainConfig, **kw):
        """Put `data` in the object store once and start the runners over it."""
        return cls(ray.put(data), model, train, **kw)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every runner has been constructed (raises on timeout)."""
        ray.get([a.ready.remote() for a in self.actors], timeout=timeout_s)

    def run_round(
        self, weights_ref: ray.ObjectRef, tasks: list[ClientTask], timeout_s: float
    ) -> RoundResult:
        """Train every task's client from `weights_ref`; never raises for a client's fault."""
        deadline = time.monotonic() + timeout_s
        queue = deque(tasks)
        pending: dict[ray.ObjectRef, tuple[ClientTask, int]] = {}
        done: list[tuple[ClientTask, ray.ObjectRef]] = []
        failures: list[ClientFailure] = []
        load = [0] * len(self.actors)

        def submit(slot: int) -> None:
            task = queue.popleft()
            ref = self.actors[slot].train.remote(weights_ref, task)
            pending[ref] = (task, slot)
            load[slot] += 1

        for slot in range(len(self.actors)):
            while queue and load[slot] < self._in_flight:
                submit(slot)
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=remaining)
            for ref in ready:
                task, slot = pending.pop(ref)
                load[slot] -= 1
                done.append((task, ref))
                if queue:
                    submit(slot)
        for ref, (task, _) in pending.items():
            ray.cancel(ref, force=False)
            failures.append(_failure(task, f"no answer within the round timeout ({timeout_s}s)"))
        for task in queue:
            failures.append(_failure(task, "not dispatched before the round timeout"))
        return _collect(done, failures)


def _collect(done: list[tuple[ClientTask, ray.ObjectRef]], failures: list[ClientFailure]):
    result = RoundResult(failures=failures)
    for task, ref in sorted(done, key=lambda item: item[0].client_id):
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
