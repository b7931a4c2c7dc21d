"""The monitor actor on a real local Ray: same snapshots and metrics as the pure monitor."""

from __future__ import annotations

import numpy as np
import pytest
import ray

from actors.monitor import MonitorActor
from quantum.monitor import JobOutcome, MonitorConfig, ResourceMonitor
from quantum.resources import AvailabilityConfig, ResourceConfig, ResourceSimulator

pytestmark = pytest.mark.usefixtures("ray_local")


def test_monitor_actor_matches_the_pure_monitor() -> None:
    configs = [
        ResourceConfig(name="a", qubits=4, availability=AvailabilityConfig(queue_arrivals=2.0)),
        ResourceConfig(name="b", qubits=4, availability=AvailabilityConfig(outages=[[1, 1]])),
    ]
    sims = [ResourceSimulator(c) for c in configs]
    config = MonitorConfig(trip_failures=2)
    actor = MonitorActor.remote(["a", "b"], config)
    local = ResourceMonitor(["a", "b"], config)
    for t in range(3):
        states = [s.step(t, np.random.default_rng([t, i])) for i, s in enumerate(sims)]
        outcomes = [
            JobOutcome(resource="a", client_id=k, round=t, ok=False, reason="noise")
            for k in range(2)
        ]
        ray.get([actor.observe.remote(*states), actor.report.remote(*outcomes)])
        local.observe(states)
        local.report(outcomes)
        snapshot = ray.get(actor.snapshot.remote(), timeout=60)
        assert snapshot == local.snapshot()
        assert snapshot.round == t
        assert snapshot["b"].available is (t != 1)
        assert snapshot["a"].available is (t == 0)  # tripped by the 2 failures of round t-1
        assert ray.get(actor.metrics.remote(), timeout=60) == local.metrics()
    assert len(ray.get(actor.outcomes.remote("a"), timeout=60)) == 6
    ray.kill(actor)


def test_monitor_actor_surfaces_errors() -> None:
    actor = MonitorActor.remote(["a"])
    with pytest.raises(ValueError, match="no state observed yet"):
        ray.get(actor.snapshot.remote(), timeout=60)
    ray.kill(actor)
