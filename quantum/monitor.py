"""The quantum resource monitor: the latest state of each resource and how its jobs went.

Each round the driver gives the monitor every resource's `ResourceState` (from the
seeded `ResourceSimulator`, or from a real device's status), and clients report the
outcome of every quantum job they submitted (`JobOutcome`). `snapshot()` is what the
scheduler reads: per resource, available or not and why, queue length, estimated
wait, current error rates, and the recent failures with their reasons. `metrics()`
is the same snapshot as a flat dict for MLflow (one metric series per resource).

A resource the availability model says is up is still reported unavailable when the
previous round's jobs on it all failed, at least `trip_failures` of them (a circuit
breaker: the round after, no jobs ran on it in the round before, so it is tried again).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence

from pydantic import BaseModel, ConfigDict, Field, model_validator

from quantum.resources import ResourceState


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MonitorConfig(_Model):
    """How much job history the monitor keeps and when it trips a resource."""

    history: int = Field(100, ge=1, description="job outcomes kept per resource")
    trip_failures: int | None = Field(
        3, ge=1, description="failed jobs (and none ok) in a round that mark it down next round"
    )


class JobOutcome(_Model):
    """How one client's quantum job on a resource went."""

    resource: str
    client_id: int = Field(ge=0)
    round: int = Field(ge=0)
    ok: bool
    reason: str | None = None  # why it failed; None when ok
    seconds: float = Field(0.0, ge=0.0)
    shots: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _reason_iff_failed(self) -> JobOutcome:
        if self.ok and self.reason is not None:
            raise ValueError("a successful job has no failure reason")
        if not self.ok and not self.reason:
            raise ValueError("a failed job needs a reason")
        return self


class ResourceStatus(_Model):
    """What the monitor knows about one resource in one round."""

    name: str
    available: bool  # the state says up and the circuit breaker has not tripped
    reason: str | None  # why unavailable
    state: ResourceState
    jobs: int = Field(ge=0)  # outcomes in the history window
    failures: int = Field(ge=0)  # failures in the history window
    failure_reasons: dict[str, int]  # reason -> count, in the history window
    last_failure: str | None
    round_jobs: int = Field(ge=0)  # outcomes reported for the snapshot's round
    round_failures: int = Field(ge=0)

    @property
    def queue_length(self) -> int:
        return self.state.queue_length

    @property
    def est_wait_s(self) -> float:
        return self.state.est_wait_s


class MonitorSnapshot(_Model):
    """Every resource's status in round `round`."""

    round: int = Field(ge=0)
    resources: dict[str, ResourceStatus]

    def __getitem__(self, name: str) -> ResourceStatus:
        return self.resources[name]

    def metrics(self) -> dict[str, float]:
        """Flat metrics, `resource.<name>.<field>`, for MLflow."""
        out: dict[str, float] = {}
        for name, status in self.resources.items():
            s = status.state
            key = f"resource.{name}."
            out |= {
                key + "available": float(status.available),
                key + "queue_length": float(s.queue_length),
                key + "est_wait_s": float(s.est_wait_s),
                key + "p1": float(s.p1),
                key + "p2": float(s.p2),
                key + "readout": float(s.readout),
                key + "jobs": float(status.round_jobs),
                key + "failures": float(status.round_failures),
                key + "recent_failures": float(status.failures),
            }
        return out


class ResourceMonitor:
    """Latest state per resource plus a bounded history of job outcomes."""

    def __init__(self, names: Sequence[str], config: MonitorConfig | None = None):
        if len(set(names)) != len(names):
            raise ValueError(f"resource names repeat: {list(names)}")
        self.config = config or MonitorConfig()
        self._states: dict[str, ResourceState | None] = dict.fromkeys(names)
        self._jobs: dict[str, deque[JobOutcome]] = {
            name: deque(maxlen=self.config.history) for name in names
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._states)

    def _known(self, name: str) -> None:
        if name not in self._states:
            raise ValueError(f"unknown resource {name!r} (monitored: {', '.join(self._states)})")

    def observe(self, states: ResourceState | Iterable[ResourceState]) -> None:
        """Record the current state of one or more resources."""
        for state in [states] if isinstance(states, ResourceState) else states:
            self._known(state.name)
            self._states[state.name] = state

    def report(self, outcomes: JobOutcome | Iterable[JobOutcome]) -> None:
        """Record the outcome of one or more quantum jobs."""
        for outcome in [outcomes] if isinstance(outcomes, JobOutcome) else outcomes:
            self._known(outcome.resource)
            self._jobs[outcome.resource].append(outcome)

    def outcomes(self, name: str) -> list[JobOutcome]:
        """The history window of `name`, oldest first."""
        self._known(name)
        return list(self._jobs[name])

    def state(self) -> dict[str, list[dict]]:
        """The job history of every resource, JSON-ready (a checkpoint's; the states are
        observed afresh each round)."""
        return {
            name: [outcome.model_dump(mode="json") for outcome in jobs]
            for name, jobs in self._jobs.items()
        }

    def load_state(self, state: Mapping[str, Sequence[Mapping]]) -> None:
        """Restore the job history a `state()` holds (a resumed run's)."""
        for name, outcomes in state.items():
            self._known(name)
            jobs = self._jobs[name]
            jobs.clear()
            jobs.extend(JobOutcome.model_validate(outcome) for outcome in outcomes)

    def status(self, name: str) -> ResourceStatus:
        """The status of resource `name` (it must have been observed)."""
        self._known(name)
        state = self._states[name]
        if state is None:
            raise ValueError(f"no state observed yet for resource {name!r}")
        jobs = self._jobs[name]
        failed = [o for o in jobs if not o.ok]
        this_round = [o for o in jobs if o.round == state.round]
        available, reason = state.available, state.reason
        tripped = self._tripped(jobs, state.round - 1)
        if available and tripped is not None:
            available, reason = False, tripped
        return ResourceStatus(
            name=name,
            available=available,
            reason=reason,
            state=state,
            jobs=len(jobs),
            failures=len(failed),
            failure_reasons=dict(Counter(o.reason for o in failed if o.reason)),
            last_failure=failed[-1].reason if failed else None,
            round_jobs=len(this_round),
            round_failures=sum(not o.ok for o in this_round),
        )

    def _tripped(self, jobs: Iterable[JobOutcome], round_: int) -> str | None:
        limit = self.config.trip_failures
        if limit is None or round_ < 0:
            return None
        outcomes = [o for o in jobs if o.round == round_]
        failed = [o for o in outcomes if not o.ok]
        if len(failed) >= limit and len(failed) == len(outcomes):
            return f"tripped: all {len(failed)} jobs failed in round {round_} ({failed[-1].reason})"
        return None

    def snapshot(self) -> MonitorSnapshot:
        """Every resource's status; all must have been observed in the same round."""
        statuses = {name: self.status(name) for name in self._states}
        rounds = {status.state.round for status in statuses.values()}
        if len(rounds) > 1:
            raise ValueError(f"resource states are from different rounds: {sorted(rounds)}")
        round_ = rounds.pop() if rounds else 0
        return MonitorSnapshot(round=round_, resources=statuses)

    def metrics(self) -> dict[str, float]:
        """`snapshot().metrics()`: `resource.<name>.available`, `.queue_length`, ..."""
        return self.snapshot().metrics()
