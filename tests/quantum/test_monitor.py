"""Tests for quantum.monitor: snapshots, job history, the circuit breaker, MLflow metrics."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from quantum.monitor import JobOutcome, MonitorConfig, ResourceMonitor
from quantum.resources import ResourceState


def state(name: str = "a", round_: int = 1, available: bool = True, **fields) -> ResourceState:
    values = {
        "name": name,
        "round": round_,
        "available": available,
        "reason": None if available else "outage window [1, 2]",
        "queue_length": 3,
        "backlog": 0,
        "est_wait_s": 8.4,
        "p1": 0.001,
        "p2": 0.02,
        "readout": 0.03,
        "qubits": 5,
        "seconds_per_shot": 2e-4,
        "job_overhead_s": 2.0,
        "shots_budget": 10_000,
    }
    return ResourceState(**(values | fields))


def ok(round_: int, client: int = 0, resource: str = "a") -> JobOutcome:
    return JobOutcome(resource=resource, client_id=client, round=round_, ok=True, seconds=1.5)


def failed(round_: int, reason: str = "timeout", client: int = 0, resource: str = "a"):
    return JobOutcome(resource=resource, client_id=client, round=round_, ok=False, reason=reason)


def test_job_outcome_reason_iff_failed() -> None:
    with pytest.raises(ValidationError, match="successful job has no failure reason"):
        JobOutcome(resource="a", client_id=0, round=0, ok=True, reason="x")
    with pytest.raises(ValidationError, match="failed job needs a reason"):
        JobOutcome(resource="a", client_id=0, round=0, ok=False)


def test_snapshot_carries_the_states() -> None:
    monitor = ResourceMonitor(["a", "b"])
    monitor.observe([state("a"), state("b", available=False, queue_length=7)])
    snap = monitor.snapshot()
    assert snap.round == 1
    assert list(snap.resources) == ["a", "b"]
    assert snap["a"].available and snap["a"].reason is None
    assert not snap["b"].available
    assert snap["b"].reason == "outage window [1, 2]"
    assert snap["b"].queue_length == 7
    assert snap["a"].est_wait_s == 8.4
    assert snap["a"].state.p2 == 0.02


def test_failures_and_reasons_in_the_history_window() -> None:
    monitor = ResourceMonitor(["a"], MonitorConfig(history=4, trip_failures=None))
    monitor.observe(state(round_=2))
    monitor.report([failed(0, "queue timeout"), ok(1), failed(1, "calibration")])
    monitor.report([failed(2, "calibration", client=3), ok(2, client=4)])
    status = monitor.status("a")
    # history=4 drops the round-0 failure
    assert [o.round for o in monitor.outcomes("a")] == [1, 1, 2, 2]
    assert (status.jobs, status.failures) == (4, 2)
    assert status.failure_reasons == {"calibration": 2}
    assert status.last_failure == "calibration"
    assert (status.round_jobs, status.round_failures) == (2, 1)


def test_all_failed_last_round_trips_the_resource_for_one_round() -> None:
    monitor = ResourceMonitor(["a"], MonitorConfig(trip_failures=3))
    monitor.report([failed(4, "bad result", client=k) for k in range(3)])
    monitor.observe(state(round_=5))
    status = monitor.snapshot()["a"]
    assert not status.available
    assert status.reason == "tripped: all 3 jobs failed in round 4 (bad result)"
    assert status.state.available  # the availability model still says up
    monitor.observe(state(round_=6))  # no job ran in round 5: tried again
    assert monitor.snapshot()["a"].available


def test_a_restored_job_history_trips_the_resource_as_the_original_would() -> None:
    """A resumed run's monitor: the outcomes come back from a (JSON) checkpoint, so the
    round after the crash sees the breaker the uninterrupted run saw."""
    original = ResourceMonitor(["a", "b"], MonitorConfig(trip_failures=3, history=4))
    original.report([failed(4, "bad result", client=k) for k in range(3)])
    original.report([ok(k, client=k, resource="b") for k in range(6)])  # 4 kept
    saved = json.loads(json.dumps(original.state()))
    restored = ResourceMonitor(["a", "b"], MonitorConfig(trip_failures=3, history=4))
    restored.load_state(saved)
    assert restored.outcomes("a") == original.outcomes("a")
    assert [o.round for o in restored.outcomes("b")] == [2, 3, 4, 5]
    for monitor in (original, restored):
        monitor.observe([state("a", round_=5), state("b", round_=5)])
    assert restored.snapshot() == original.snapshot()
    assert not restored.snapshot()["a"].available  # tripped, as in the original
    fresh = ResourceMonitor(["a", "b"], MonitorConfig(trip_failures=3, history=4))
    fresh.observe([state("a", round_=5), state("b", round_=5)])
    assert fresh.snapshot()["a"].available  # what a resume without the history saw
    with pytest.raises(ValueError, match="unknown resource"):
        restored.load_state({"c": []})


@pytest.mark.parametrize(
    ("outcomes", "trip", "available"),
    [
        ([failed(4), failed(4)], 3, True),  # too few failures
        ([failed(4), failed(4), failed(4), ok(4)], 3, True),  # one job went through
        ([failed(4), failed(4), failed(4)], None, True),  # breaker off
        ([failed(3), failed(3), failed(3)], 3, True),  # not the previous round
        ([failed(4)], 1, False),
    ],
)
def test_circuit_breaker_cases(outcomes, trip, available) -> None:
    monitor = ResourceMonitor(["a"], MonitorConfig(trip_failures=trip))
    monitor.report(outcomes)
    monitor.observe(state(round_=5))
    assert monitor.snapshot()["a"].available is available


def test_a_down_resource_keeps_its_own_reason() -> None:
    monitor = ResourceMonitor(["a"], MonitorConfig(trip_failures=1))
    monitor.report(failed(0))
    monitor.observe(state(round_=1, available=False))
    assert monitor.snapshot()["a"].reason == "outage window [1, 2]"


def test_metrics_are_flat_per_resource() -> None:
    monitor = ResourceMonitor(["a", "b"], MonitorConfig(trip_failures=None))
    monitor.observe([state("a"), state("b", available=False, p2=0.05)])
    monitor.report([failed(1, resource="b"), failed(0, resource="b"), ok(1, resource="b")])
    metrics = monitor.metrics()
    assert metrics == {
        "resource.a.available": 1.0,
        "resource.a.queue_length": 3.0,
        "resource.a.est_wait_s": 8.4,
        "resource.a.p1": 0.001,
        "resource.a.p2": 0.02,
        "resource.a.readout": 0.03,
        "resource.a.jobs": 0.0,
        "resource.a.failures": 0.0,
        "resource.a.recent_failures": 0.0,
        "resource.b.available": 0.0,
        "resource.b.queue_length": 3.0,
        "resource.b.est_wait_s": 8.4,
        "resource.b.p1": 0.001,
        "resource.b.p2": 0.05,
        "resource.b.readout": 0.03,
        "resource.b.jobs": 2.0,
        "resource.b.failures": 1.0,
        "resource.b.recent_failures": 2.0,
    }
    assert all(type(v) is float for v in metrics.values())


def test_unknown_and_unobserved_resources_are_errors() -> None:
    monitor = ResourceMonitor(["a", "b"])
    with pytest.raises(ValueError, match="unknown resource 'c'"):
        monitor.observe(state("c"))
    with pytest.raises(ValueError, match="unknown resource 'c'"):
        monitor.report(failed(0, resource="c"))
    monitor.observe(state("a"))
    with pytest.raises(ValueError, match="no state observed yet for resource 'b'"):
        monitor.snapshot()
    monitor.observe(state("b", round_=2))
    with pytest.raises(ValueError, match=r"different rounds: \[1, 2\]"):
        monitor.snapshot()
    with pytest.raises(ValueError, match="repeat"):
        ResourceMonitor(["a", "a"])


def test_snapshot_is_a_plain_value() -> None:
    monitor = ResourceMonitor(["a"])
    monitor.observe(state("a"))
    snap = monitor.snapshot()
    monitor.report(failed(1))
    assert snap["a"].round_failures == 0  # taken before the report
    assert monitor.snapshot()["a"].round_failures == 1
    assert type(snap).model_validate_json(snap.model_dump_json()) == snap
