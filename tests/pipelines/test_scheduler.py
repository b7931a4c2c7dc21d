"""Tests for pipelines.scheduler: client kinds, A(t), Eq. 9, reliability and the round plan."""

from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
from pydantic import ValidationError

from ledger.records import RoundOpen
from pipelines.scheduler import (
    FIDELITY_FLOOR,
    ClientsConfig,
    GainTracker,
    QuantumJob,
    ReliabilityTracker,
    SchedulerConfig,
    advantage_score,
    advantage_terms,
    assign_roster,
    assign_task,
    fidelity,
    plan_round,
    select_clients,
)
from quantum.config import CircuitConfig
from quantum.monitor import JobOutcome, MonitorConfig, ResourceMonitor
from quantum.resources import ResourceState

INF = math.inf


def state(name: str = "qpu", available: bool = True, **fields) -> ResourceState:
    values = {
        "name": name,
        "round": 3,
        "available": available,
        "reason": None if available else "random downtime",
        "queue_length": 0,
        "backlog": 0,
        "est_wait_s": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "readout": 0.0,
        "qubits": 50,
        "seconds_per_shot": 1e-3,
        "job_overhead_s": 1.0,
        "shots_budget": 100_000,
    }
    return ResourceState(**(values | fields))


# 10 examples x 9 circuits x 100 shots = 9000 shots: T_Q = 1 + 9000 * 1e-3 = 10 s
JOB = QuantumJob(qubits=2, gates_1q=4, gates_2q=1, examples=10, circuits_per_example=9, shots=100)
ONLY_COST = SchedulerConfig(w_quality=0.0, w_gain=0.0)


# --------------------------------------------------------------------------- client kinds


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "exactly one"),
        ({"counts": {"classical": 2}, "fractions": {"classical": 1.0}}, "exactly one"),
        ({"counts": {"classical": 2.5}}, "whole numbers"),
        ({"fractions": {"classical": 0.5, "hybrid": 0.4}}, "sum to 1"),
        ({"fractions": {"classical": -0.5, "hybrid": 1.5}}, "greater than or equal"),
        ({"counts": {"hybrid": 2}, "resources": ["a", "a"]}, "repeats"),
        ({"counts": {"quantum": 2}}, "quantum"),
    ],
)
def test_bad_clients_configs(fields, match) -> None:
    with pytest.raises(ValidationError, match=match):
        ClientsConfig(**fields)


@pytest.mark.parametrize(
    ("fractions", "n", "counts"),
    [
        ((0.25, 0.25, 0.5), 10, (3, 2, 5)),  # 2.5, 2.5, 5: the tie goes to the first kind
        ((1 / 3, 1 / 3, 1 / 3), 7, (3, 2, 2)),
        ((0.1, 0.3, 0.6), 10, (1, 3, 6)),
        ((0.0, 0.0, 1.0), 4, (0, 0, 4)),
        ((0.5, 0.5, 0.0), 1, (1, 0, 0)),
    ],
)
def test_fractions_by_largest_remainder(fractions, n, counts) -> None:
    config = ClientsConfig(
        fractions=dict(zip(("classical", "quantum_enhanced", "hybrid"), fractions, strict=True))
    )
    assert tuple(config.kind_counts(n).values()) == counts


def test_counts_must_sum_to_the_clients() -> None:
    config = ClientsConfig(counts={"classical": 2, "hybrid": 3})
    assert config.kind_counts(5) == {"classical": 2, "quantum_enhanced": 0, "hybrid": 3}
    with pytest.raises(ValueError, match="sum to 5, not to 6"):
        config.kind_counts(6)


def test_roster_is_seeded_and_balanced() -> None:
    config = ClientsConfig(counts={"classical": 10, "quantum_enhanced": 7, "hybrid": 13})
    a = assign_roster(config, 30, ["r0", "r1", "r2"], np.random.default_rng(1))
    b = assign_roster(config, 30, ["r0", "r1", "r2"], np.random.default_rng(1))
    c = assign_roster(config, 30, ["r0", "r1", "r2"], np.random.default_rng(2))
    np.testing.assert_array_equal(a.kinds, b.kinds)
    np.testing.assert_array_equal(a.resource_index, b.resource_index)
    assert not np.array_equal(a.kinds, c.kinds)
    assert a.counts() == {"classical": 10, "quantum_enhanced": 7, "hybrid": 13}
    assert all(a.resource(k) is None for k in a.clients_of("classical"))
    for kind, n in (("quantum_enhanced", 7), ("hybrid", 13)):
        per_resource = [sum(a.resource(k) == r for k in a.clients_of(kind)) for r in a.resources]
        assert sum(per_resource) == n
        assert max(per_resource) - min(per_resource) <= 1


def test_roster_uses_the_configured_resources() -> None:
    config = ClientsConfig(fractions={"hybrid": 1.0}, resources=["r1"])
    roster = assign_roster(config, 6, ["r0", "r1"], np.random.default_rng(0))
    assert {roster.resource(k) for k in range(6)} == {"r1"}
    with pytest.raises(ValueError, match=r"unknown resources \['r9'\]"):
        ClientsConfig(counts={"hybrid": 2}, resources=["r9"]).check(2, ["r0"])
    with pytest.raises(ValueError, match="2 quantum-enhanced/hybrid clients need"):
        ClientsConfig(counts={"hybrid": 2}).check(2, [])


# --------------------------------------------------------------------------- Eq. 9


@pytest.mark.parametrize(
    ("available", "advantage", "tau", "path"),
    [
        (True, 1.0, 0.0, "quantum"),
        (True, 0.0, 0.0, "classical"),  # strictly greater
        (True, -1.0, 0.0, "classical"),
        (False, 1.0, 0.0, "classical"),
        (False, INF, -INF, "classical"),  # a resource down wins over everything
        (True, INF, INF, "classical"),  # tau_Q = inf: never quantum
        (True, 1e300, INF, "classical"),
        (True, -1e300, -INF, "quantum"),  # tau_Q = -inf: quantum whenever available
        (True, INF, 1e300, "quantum"),
        (True, math.nan, -INF, "classical"),
    ],
)
def test_eq9_truth_table(available, advantage, tau, path) -> None:
    assert assign_task(available, advantage, tau) == path


# --------------------------------------------------------------------------- A(t)


def test_advantage_formula_on_known_numbers() -> None:
    config = SchedulerConfig(w_cost=1.0, w_quality=2.0, w_gain=3.0, seconds_per_amplitude=1e-9)
    s = state(p1=0.01, p2=0.1, readout=0.02, est_wait_s=5.0)
    terms = advantage_terms(JOB, s, config, gain=0.5)
    t_c = 1e-9 * 3 * 10 * 5 * 2**2  # c_amp x 3 passes x examples x gates x 2^n
    t_q = 5.0 + 1.0 + 9000 * 1e-3  # wait + overhead + shots x seconds per shot
    f = 0.99**4 * 0.9**1 * 0.98**2
    assert terms.classical_seconds == pytest.approx(t_c)
    assert terms.quantum_seconds == pytest.approx(t_q)
    assert terms.fidelity == pytest.approx(f)
    expected = math.log2(t_c / t_q) + 2 * math.log2(f) + 3 * 0.5
    assert terms.score == pytest.approx(expected)
    assert advantage_score(JOB, s, config, gain=0.5) == terms.score


def test_tau_zero_splits_at_equal_times() -> None:
    t_q = 10.0
    equal = advantage_score(JOB, state(), ONLY_COST, classical_seconds=t_q)
    double = advantage_score(JOB, state(), ONLY_COST, classical_seconds=2 * t_q)
    half = advantage_score(JOB, state(), ONLY_COST, classical_seconds=t_q / 2)
    assert (equal, double, half) == (0.0, 1.0, -1.0)
    assert assign_task(True, equal, 0.0) == "classical"
    assert assign_task(True, double, 0.0) == "quantum"


def test_infeasible_exact_simulation_gives_infinite_advantage() -> None:
    big = QuantumJob(
        qubits=40, gates_1q=80, gates_2q=39, examples=10, circuits_per_example=81, shots=1
    )
    noisy = state(p1=0.01, p2=0.05, readout=0.05, est_wait_s=1e6)
    terms = advantage_terms(big, noisy, SchedulerConfig(), gain=-1.0)
    assert terms.classical_seconds == INF and terms.score == INF
    assert assign_task(True, terms.score, 1e300) == "quantum"
    assert assign_task(True, terms.score, INF) == "classical"
    assert assign_task(False, terms.score, 0.0) == "classical"
    # a zero weight drops the term: no 0 * inf
    assert math.isfinite(advantage_score(big, noisy, SchedulerConfig(w_cost=0.0)))


def test_memory_boundary_of_exact_simulation() -> None:
    job = JOB.model_copy(update={"qubits": 20, "batch": 32})
    need = 4.0 * 32 * 2**20 * 8  # memory_factor x batch x 2^n x bytes
    assert job.exact_bytes(SchedulerConfig()) == need
    assert math.isfinite(job.exact_seconds(SchedulerConfig(memory_budget_bytes=need)))
    assert job.exact_seconds(SchedulerConfig(memory_budget_bytes=need - 1)) == INF


def test_exact_simulation_cost_grows_as_two_to_the_n() -> None:
    config = SchedulerConfig(memory_budget_bytes=1e30)
    costs = [JOB.model_copy(update={"qubits": n}).exact_seconds(config) for n in range(2, 12)]
    assert all(b == pytest.approx(2 * a) for a, b in pairwise(costs))


def test_measured_zero_classical_time_is_minus_infinity_not_nan() -> None:
    score = advantage_score(JOB, state(), SchedulerConfig(), classical_seconds=0.0)
    assert score == -INF
    assert assign_task(True, score, -INF) == "classical"


def test_quality_penalty_and_its_floor() -> None:
    assert fidelity(JOB, state()) == 1.0
    assert advantage_terms(JOB, state(), SchedulerConfig()).quality == 0.0
    dead = state(p2=1.0)
    assert fidelity(JOB, dead) == 0.0
    assert advantage_terms(JOB, dead, SchedulerConfig()).quality == math.log2(FIDELITY_FLOOR)
    worse = advantage_score(JOB, state(p2=0.2), SchedulerConfig())
    better = advantage_score(JOB, state(p2=0.01), SchedulerConfig())
    assert worse < better


def test_longer_queue_lowers_the_advantage() -> None:
    short = advantage_score(JOB, state(est_wait_s=0.0), ONLY_COST)
    long = advantage_score(JOB, state(est_wait_s=30.0), ONLY_COST)  # T_Q 10 s -> 40 s
    assert short - long == pytest.approx(2.0)


def test_gain_must_lie_in_its_range() -> None:
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        advantage_score(JOB, state(), SchedulerConfig(), gain=1.5)


def test_quantum_job_of_a_circuit() -> None:
    circuit = CircuitConfig(qubits=4, layers=2, entanglement="linear")
    job = QuantumJob.from_circuit(circuit, examples=50, shots=1024)
    # encoding 4 + RY 8 one-qubit gates, 3 CNOTs x 2 layers, 2 x 8 + 1 circuits per input
    assert (job.gates_1q, job.gates_2q, job.circuits_per_example) == (12, 6, 17)
    assert job.total_shots == 50 * 17 * 1024
    reupload = CircuitConfig(qubits=4, layers=2, entanglement="ring", reupload=True)
    job = QuantumJob.from_circuit(reupload, examples=1, shots=1, gradient="spsa")
    assert (job.gates_1q, job.gates_2q, job.circuits_per_example) == (16, 8, 3)


def test_tau_nan_is_rejected() -> None:
    with pytest.raises(ValidationError, match="NaN"):
        SchedulerConfig(tau_q=math.nan)
    assert SchedulerConfig(tau_q=-INF).tau_q == -INF


# --------------------------------------------------------------------------- gain


def test_gain_tracker() -> None:
    gains = GainTracker(window=2)
    assert gains.gain("qpu") == 0.0
    gains.observe("quantum", 0.02, "qpu")
    assert gains.gain("qpu") == 0.0  # no classical history yet
    gains.observe("classical", 0.01)
    assert gains.gain("qpu") == pytest.approx(1 / 3)
    assert gains.gain("other") == 0.0
    gains.observe("quantum", -0.05, "qpu")
    gains.observe("quantum", -0.01, "qpu")  # window 2: the 0.02 is gone, mean -0.03
    assert gains.gain("qpu") == pytest.approx((-0.03 - 0.01) / 0.04)
    restored = GainTracker.from_state(gains.state())
    assert restored.gain("qpu") == gains.gain("qpu")
    with pytest.raises(ValueError, match="finite"):
        gains.observe("classical", math.nan)
    with pytest.raises(ValueError, match="needs its resource"):
        gains.observe("quantum", 0.1)


# --------------------------------------------------------------------------- reliability


def test_reliability_is_an_exponential_average() -> None:
    tracker = ReliabilityTracker(smoothing=0.5, failures_before_cooldown=10, cooldown_rounds=1)
    assert tracker.reliability(7) == 1.0
    tracker.record(7, 0, ok=False)
    tracker.record(7, 1, ok=False)
    tracker.record(7, 2, ok=True)
    assert tracker.reliability(7) == 0.625  # 1 -> 0.5 -> 0.25 -> 0.625
    np.testing.assert_array_equal(tracker.reliabilities([7, 8]), [0.625, 1.0])


@pytest.mark.parametrize("cooldown", [1, 3, 5])
def test_cooldown_excludes_for_exactly_the_configured_rounds(cooldown: int) -> None:
    tracker = ReliabilityTracker(failures_before_cooldown=2, cooldown_rounds=cooldown)
    tracker.record(4, 10, ok=False)
    assert not tracker.cooling(4, 11)  # one failure is not enough
    tracker.record(4, 11, ok=False)
    out = [t for t in range(5, 30) if tracker.cooling(4, t)]
    assert out == list(range(12, 12 + cooldown))
    assert tracker.eligible([3, 4], 12) == [3]
    assert tracker.eligible([3, 4], 12 + cooldown) == [3, 4]
    weights = tracker.selection_weights([3, 4], 12, min_weight=0.05)
    assert weights[1] == 0.0 and weights[0] == 1.0


def test_success_breaks_the_failure_streak() -> None:
    tracker = ReliabilityTracker(failures_before_cooldown=2, cooldown_rounds=3)
    tracker.record(1, 0, ok=False)
    tracker.record(1, 1, ok=True)
    tracker.record(1, 2, ok=False)
    assert not any(tracker.cooling(1, t) for t in range(10))
    tracker.record(1, 3, ok=False)
    assert [t for t in range(10) if tracker.cooling(1, t)] == [4, 5, 6]


def test_zero_cooldown_never_excludes() -> None:
    tracker = ReliabilityTracker(failures_before_cooldown=1, cooldown_rounds=0)
    for t in range(5):
        tracker.record(0, t, ok=False)
    assert tracker.eligible([0], 5) == [0]


def test_reliability_state_round_trip() -> None:
    tracker = ReliabilityTracker.from_config(
        SchedulerConfig(failures_before_cooldown=1, cooldown_rounds=2)
    )
    tracker.record(5, 0, ok=False)
    tracker.record(6, 0, ok=True)
    restored = ReliabilityTracker.from_config(
        SchedulerConfig(failures_before_cooldown=1, cooldown_rounds=2)
    )
    restored.load_state(tracker.state())
    assert restored.reliability(5) == tracker.reliability(5) == 0.8
    assert restored.cooling(5, 2) and not restored.cooling(5, 3)


def test_minimum_weight_floor() -> None:
    tracker = ReliabilityTracker(smoothing=1.0, failures_before_cooldown=99)
    tracker.record(0, 0, ok=False)
    np.testing.assert_array_equal(tracker.selection_weights([0, 1], 1, 0.05), [0.05, 1.0])


# --------------------------------------------------------------------------- selection


def test_single_pick_frequencies_match_the_weights() -> None:
    rng = np.random.default_rng(0)
    weights = np.array([1.0, 2.0, 3.0, 4.0])
    draws = 20000
    counts = np.zeros(4)
    for _ in range(draws):
        counts[select_clients(rng, [10, 11, 12, 13], weights, 1)[0] - 10] += 1
    # sd of a frequency <= sqrt(0.25 / 20000) ~ 0.0035
    np.testing.assert_allclose(counts / draws, weights / weights.sum(), atol=0.015)


def test_pair_inclusion_matches_sequential_sampling() -> None:
    p = np.array([1.0, 2.0, 3.0, 4.0]) / 10
    # P(i in a sequential pair) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    exact = [p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i) for i in range(4)]
    rng = np.random.default_rng(1)
    counts = np.zeros(4)
    draws = 20000
    for _ in range(draws):
        counts[select_clients(rng, range(4), p, 2)] += 1
    np.testing.assert_allclose(counts / draws, exact, atol=0.02)


def test_zero_weight_candidates_are_never_selected() -> None:
    rng = np.random.default_rng(2)
    weights = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    picked = {k for _ in range(500) for k in select_clients(rng, range(6), weights, 2)}
    assert picked == {0, 2, 4, 5}


def test_selection_edges() -> None:
    rng = np.random.default_rng(3)
    assert select_clients(rng, [9, 4, 7], [1.0, 0.0, 2.0], 2) == [7, 9]  # all positive ones
    assert select_clients(rng, [1, 2], [0.0, 0.0], 1) == []
    a = select_clients(np.random.default_rng(4), range(100), np.ones(100), 10)
    b = select_clients(np.random.default_rng(4), range(100), np.ones(100), 10)
    assert a == b == sorted(a) and len(set(a)) == 10
    with pytest.raises(ValueError, match="cannot select 0"):
        select_clients(rng, [1], [1.0], 0)
    with pytest.raises(ValueError, match="2 weights for 3 candidates"):
        select_clients(rng, [1, 2, 3], [1.0, 1.0], 1)
    with pytest.raises(ValueError, match="finite and >= 0"):
        select_clients(rng, [1, 2], [1.0, -1.0], 1)


# --------------------------------------------------------------------------- round plan


def _setup(states, trip=None):
    config = ClientsConfig(counts={"classical": 2, "quantum_enhanced": 3, "hybrid": 3})
    roster = assign_roster(config, 8, ["up", "down"], np.random.default_rng(0))
    monitor = ResourceMonitor(["up", "down"], MonitorConfig(trip_failures=trip))
    monitor.observe(states)
    return roster, monitor


def test_plan_follows_kinds_availability_and_eq9() -> None:
    roster, monitor = _setup([state("up"), state("down", available=False)])
    config = SchedulerConfig(tau_q=-INF)  # hybrid clients go quantum whenever they can
    plan = plan_round(3, range(8), roster, monitor.snapshot(), JOB, config)
    assert [t.client_id for t in plan.tasks] == list(range(8))
    for task in plan.tasks:
        kind, resource = roster.kind(task.client_id), roster.resource(task.client_id)
        assert (task.kind, task.resource) == (kind, resource)
        if kind == "classical":
            assert (task.path, task.fallback) == ("classical", False)
        elif resource == "up":
            assert (task.path, task.fallback, task.shots) == ("quantum", False, 9000)
        else:
            assert (task.path, task.fallback, task.shots) == ("classical", True, 0)
            assert "resource down unavailable: random downtime" in task.reason
    assert all(t.advantage is not None for t in plan.tasks if t.kind == "hybrid")
    assert plan.shots_by_resource() == {"up": 9000 * sum(t.path == "quantum" for t in plan.tasks)}
    opened = RoundOpen(round=3, beacon=b"b", sampled=tuple(range(8)), plan=plan.assignments())
    assert opened.plan == plan.assignments()
    metrics = plan.metrics()
    assert metrics["plan.quantum"] + metrics["plan.classical"] == 8.0
    assert metrics["plan.fallback"] == len(plan.fallbacks())


def test_hybrid_clients_decide_by_eq9() -> None:
    roster, monitor = _setup([state("up"), state("down")])
    hybrid = roster.clients_of("hybrid")
    snapshot = monitor.snapshot()
    never = plan_round(0, hybrid, roster, snapshot, JOB, SchedulerConfig(tau_q=INF))
    assert [t.path for t in never.tasks] == ["classical"] * 3
    assert not never.fallbacks()
    # T_C of 2^4 qubits' modelled cost is far below T_Q = 10 s: A < 0
    default = plan_round(0, hybrid, roster, snapshot, JOB, SchedulerConfig())
    assert all(t.path == "classical" and t.advantage < 0 for t in default.tasks)
    measured = {k: 80.0 for k in hybrid}  # measured T_C = 8 T_Q: A = 3
    fast = plan_round(0, hybrid, roster, snapshot, JOB, ONLY_COST, classical_seconds=measured)
    assert [t.path for t in fast.tasks] == ["quantum"] * 3
    assert [t.advantage for t in fast.tasks] == [3.0] * 3
    assert fast.tasks[0].reason == "Eq. 9: A=3 > tau_Q=0.0"


def test_hybrid_on_a_down_resource_is_a_fallback_only_if_it_wanted_quantum() -> None:
    roster, monitor = _setup([state("up", available=False), state("down", available=False)])
    hybrid = roster.clients_of("hybrid")
    snapshot = monitor.snapshot()
    wanted = plan_round(0, hybrid, roster, snapshot, JOB, SchedulerConfig(tau_q=-INF))
    assert [(t.path, t.fallback) for t in wanted.tasks] == [("classical", True)] * 3
    declined = plan_round(0, hybrid, roster, snapshot, JOB, SchedulerConfig(tau_q=INF))
    assert [(t.path, t.fallback) for t in declined.tasks] == [("classical", False)] * 3


def test_shots_budget_serves_quantum_enhanced_first() -> None:
    config = ClientsConfig(counts={"quantum_enhanced": 2, "hybrid": 2})
    roster = assign_roster(config, 4, ["qpu"], np.random.default_rng(0))
    monitor = ResourceMonitor(["qpu"])
    monitor.observe(state("qpu", shots_budget=3 * 9000))  # three jobs fit
    plan = plan_round(0, range(4), roster, monitor.snapshot(), JOB, SchedulerConfig(tau_q=-INF))
    enhanced = [plan.task(k) for k in roster.clients_of("quantum_enhanced")]
    hybrid = [plan.task(k) for k in roster.clients_of("hybrid")]
    assert [t.path for t in enhanced] == ["quantum", "quantum"]
    assert sorted(t.path for t in hybrid) == ["classical", "quantum"]
    short = next(t for t in hybrid if t.path == "classical")
    assert short.fallback
    assert "shots budget: job needs 9000, 0 left this round" in short.reason
    assert plan.shots_by_resource() == {"qpu": 27000}


def test_budget_order_can_be_randomised_per_round() -> None:
    config = ClientsConfig(counts={"quantum_enhanced": 6})
    roster = assign_roster(config, 6, ["qpu"], np.random.default_rng(0))
    monitor = ResourceMonitor(["qpu"])
    monitor.observe(state("qpu", shots_budget=9000))  # one job fits
    snapshot = monitor.snapshot()
    winners = {
        next(t.client_id for t in plan.tasks if t.path == "quantum")
        for plan in (
            plan_round(
                r, range(6), roster, snapshot, JOB, SchedulerConfig(), rng=np.random.default_rng(r)
            )
            for r in range(30)
        )
    }
    assert len(winners) > 3
    fixed = plan_round(0, range(6), roster, snapshot, JOB, SchedulerConfig())
    assert [t.path for t in fixed.tasks][0] == "quantum"  # ascending ids without rng


def test_tripped_resource_is_unavailable_to_the_plan() -> None:
    config = ClientsConfig(counts={"quantum_enhanced": 1})
    roster = assign_roster(config, 1, ["qpu"], np.random.default_rng(0))
    monitor = ResourceMonitor(["qpu"], MonitorConfig(trip_failures=1))
    monitor.report(JobOutcome(resource="qpu", client_id=0, round=2, ok=False, reason="garbage"))
    monitor.observe(state("qpu"))  # round 3
    task = plan_round(3, [0], roster, monitor.snapshot(), JOB, SchedulerConfig()).tasks[0]
    assert (task.path, task.fallback) == ("classical", True)
    assert "tripped" in task.reason


def test_gain_tracker_moves_a_hybrid_decision() -> None:
    config = ClientsConfig(counts={"hybrid": 1})
    roster = assign_roster(config, 1, ["qpu"], np.random.default_rng(0))
    monitor = ResourceMonitor(["qpu"])
    monitor.observe(state("qpu"))
    scheduler = SchedulerConfig(w_gain=2.0, w_quality=0.0)
    t_q = {0: 10.0}  # A = 0 before any history
    gains = GainTracker()
    args = (3, [0], roster, monitor.snapshot(), JOB, scheduler)
    assert plan_round(*args, gains=gains, classical_seconds=t_q).tasks[0].path == "classical"
    gains.observe("classical", 0.01)
    gains.observe("quantum", 0.03, "qpu")  # G = 0.5, A = 1
    task = plan_round(*args, gains=gains, classical_seconds=t_q).tasks[0]
    assert task.path == "quantum"
    assert task.advantage == pytest.approx(1.0)


def test_per_client_jobs() -> None:
    config = ClientsConfig(counts={"quantum_enhanced": 2})
    roster = assign_roster(config, 2, ["qpu"], np.random.default_rng(0))
    monitor = ResourceMonitor(["qpu"])
    monitor.observe(state("qpu"))
    jobs = {0: JOB, 1: JOB.model_copy(update={"examples": 20})}
    plan = plan_round(0, [0, 1], roster, monitor.snapshot(), jobs, SchedulerConfig())
    assert [t.shots for t in plan.tasks] == [9000, 18000]


def test_plan_needs_the_bound_resource_in_the_snapshot() -> None:
    config = ClientsConfig(counts={"hybrid": 1})
    roster = assign_roster(config, 1, ["qpu"], np.random.default_rng(0))
    monitor = ResourceMonitor(["other"])
    monitor.observe(state("other"))
    with pytest.raises(ValueError, match="resource 'qpu' is not in the monitor's snapshot"):
        plan_round(0, [0], roster, monitor.snapshot(), JOB, SchedulerConfig())
