"""Ray actor shell around `quantum.monitor.ResourceMonitor`."""

from __future__ import annotations

import ray

from quantum.monitor import JobOutcome, MonitorConfig, MonitorSnapshot, ResourceMonitor
from quantum.resources import ResourceState


@ray.remote(num_cpus=0)
class MonitorActor:
    """The run's quantum resource monitor: the driver observes states, clients report jobs."""

    def __init__(self, names: list[str], config: MonitorConfig | None = None):
        self._monitor = ResourceMonitor(names, config)

    def observe(self, *states: ResourceState) -> None:
        self._monitor.observe(states)

    def report(self, *outcomes: JobOutcome) -> None:
        self._monitor.report(outcomes)

    def snapshot(self) -> MonitorSnapshot:
        return self._monitor.snapshot()

    def observe_and_snapshot(self, *states: ResourceState) -> MonitorSnapshot:
        """A new round's states in, its snapshot out (one round trip for the driver)."""
        self._monitor.observe(states)
        return self._monitor.snapshot()

    def report_and_metrics(self, *outcomes: JobOutcome) -> dict[str, float]:
        """A round's job outcomes in, that round's per-resource metrics out."""
        self._monitor.report(outcomes)
        return self._monitor.metrics()

    def metrics(self) -> dict[str, float]:
        return self._monitor.metrics()

    def outcomes(self, name: str) -> list[JobOutcome]:
        return self._monitor.outcomes(name)

    def state(self) -> dict[str, list[dict]]:
        return self._monitor.state()

    def load_state(self, state: dict[str, list[dict]]) -> None:
        self._monitor.load_state(state)
