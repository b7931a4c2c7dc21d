"""The driver's orchestration bookkeeping, without Ray: roster, plans, tasks, outcomes."""

from __future__ import annotations

import numpy as np
import pytest

from federated.messages import ClientUpdate
from pipelines.orchestration import Orchestrator, exact_quantum, resource_quantum
from pipelines.scheduler import ClientKindsConfig, ClientsConfig, SchedulerConfig
from quantum.config import NoiseConfig, QuantumConfig
from quantum.monitor import ResourceMonitor
from quantum.resources import AvailabilityConfig, ResourceConfig

NOISE = NoiseConfig(kind="parametric", p1=0.001, p2=0.01, readout=0.02)
QUANTUM = QuantumConfig(qubits=4, layers=1, executor="exact", shots=256)


def _resource(name="qpu", **availability):
    return ResourceConfig(
        name=name,
        qubits=4,
        noise=NOISE,
        shots_budget=10**9,
        availability=AvailabilityConfig(**availability),
    )


def _orchestrator(resources=None, kinds=None, scheduler=None, seed=0):
    resources = resources if resources is not None else [_resource()]
    kinds = kinds or ClientKindsConfig(classical=2, quantum_enhanced=2, hybrid=2)
    return Orchestrator(
        seed=seed,
        n_clients=6,
        clients=ClientsConfig(counts=kinds),
        resources=resources,
        scheduler=scheduler or SchedulerConfig(tau_q=-1e9),
        quantum=QUANTUM,
        examples=[40] * 6,
        epochs=1,
        batch_size=32,
    )


def _snapshot(orchestrator, t):
    monitor = ResourceMonitor(list(orchestrator.resources))
    monitor.observe(orchestrator.step_resources(t))
    return monitor.snapshot()


def _update(k, path="classical", *, resource=None, reason=None, gain=None, loss=1.0):
    return ClientUpdate(
        client_id=k,
        round=0,
        num_samples=40,
        loss=loss,
        delta=np.zeros(3, np.float32),
        seconds=0.1,
        path=path,
        fallback_reason=reason,
        resource=resource,
        probe_gain=gain,
    )


def test_the_roster_and_resource_states_are_reproducible_from_the_seed():
    a, b = _orchestrator(), _orchestrator()
    assert [a.roster.kind(k) for k in range(6)] == [b.roster.kind(k) for k in range(6)]
    assert a.roster.counts() == {"classical": 2, "quantum_enhanced": 2, "hybrid": 2}
    assert a.step_resources(0) == b.step_resources(0)


def test_quantum_tasks_carry_the_resources_current_noise_and_the_classical_path_is_exact():
    orch = _orchestrator()
    snapshot = _snapshot(orch, 0)
    plan = orch.plan(0, range(6), snapshot)
    tasks = orch.tasks(plan, {k: 100 + k for k in range(6)})
    quantum = [t for t in tasks if t.path == "quantum"]
    assert {t.client_id for t in quantum} == set(orch.roster.clients_of("quantum_enhanced")) | set(
        orch.roster.clients_of("hybrid")
    )
    for task in quantum:
        assert task.resource == "qpu" and task.job_failure is None
        assert task.quantum.executor == "aer" and task.quantum.noise.p2 == pytest.approx(0.01)
    assert all(t.probe and t.seed == 100 + t.client_id for t in tasks)
    exact = exact_quantum(resource_quantum(QUANTUM, orch.resources["qpu"], orch.states["qpu"]))
    assert exact.executor == "exact" and exact.noise.kind == "none" and exact.shots is None


def test_a_resource_in_an_outage_turns_bound_clients_into_planned_fallbacks():
    orch = _orchestrator([_resource(outages=((0, 0),))])
    plan = orch.plan(0, range(6), _snapshot(orch, 0))
    tasks = orch.tasks(plan, dict.fromkeys(range(6), 1))
    bound = [t for t in tasks if orch.roster.kind(t.client_id) != "classical"]
    assert all(t.path == "classical" and "outage window" in t.fallback for t in bound)
    assert plan.metrics()["plan.fallback"] == 4.0


def test_error_rate_above_the_threshold_fails_the_job_before_it_runs():
    orch = _orchestrator(scheduler=SchedulerConfig(tau_q=-1e9, max_p2=0.001))
    plan = orch.plan(0, range(6), _snapshot(orch, 0))
    quantum = [t for t in orch.tasks(plan, dict.fromkeys(range(6), 1)) if t.path == "quantum"]
    assert quantum and all("above scheduler.max_p2=0.001" in t.job_failure for t in quantum)


def test_outcomes_reliability_gains_and_fallback_records_after_a_round():
    orch = _orchestrator()
    plan = orch.plan(0, range(6), _snapshot(orch, 0))
    quantum_ids = [t.client_id for t in plan.tasks if t.path == "quantum"]
    ok, failed = quantum_ids[0], quantum_ids[1]
    updates = [
        _update(ok, "quantum", resource="qpu", gain=0.2),
        _update(failed, "fallback", resource="qpu", reason="transient job failure", gain=0.1),
    ]
    records = orch.fallbacks(updates)
    assert [(r.client_id, r.resource, r.reason) for r in records] == [
        (failed, "qpu", "transient job failure")
    ]
    outcomes = {o.client_id: o for o in orch.observe(plan, updates, accepted={ok, failed})}
    assert outcomes[ok].ok and outcomes[ok].shots > 0
    assert not outcomes[failed].ok and outcomes[failed].reason == "transient job failure"
    missing = set(quantum_ids) - {ok, failed}
    assert all(outcomes[k].reason == "the client produced no update" for k in missing)
    # sampled clients without an accepted update lose reliability
    assert orch.reliability.reliability(ok) > orch.reliability.reliability(min(missing))
    metrics = orch.metrics(plan, updates)
    assert metrics["updates.quantum"] == 1.0 and metrics["updates.fallback"] == 1.0


def test_sampler_never_picks_a_client_in_cooldown():
    scheduler = SchedulerConfig(tau_q=-1e9, failures_before_cooldown=1, cooldown_rounds=2)
    orch = _orchestrator(scheduler=scheduler)
    plan = orch.plan(0, range(6), _snapshot(orch, 0))
    orch.observe(plan, [_update(k) for k in range(1, 6)], accepted=set(range(1, 6)))
    sample = orch.sampler(1)
    picks = {k for seed in range(20) for k in sample(6, 3, np.random.default_rng(seed))}
    assert 0 not in picks and picks <= set(range(1, 6))
