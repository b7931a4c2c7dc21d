"""Tests for quantum.resources: resource configs, coupling maps and the seeded simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from qfl.errors import QuantumResourceUnavailable
from quantum.config import NoiseConfig
from quantum.noise import build_noise_model
from quantum.resources import (
    AvailabilityConfig,
    ErrorRates,
    ResourceConfig,
    ResourceSimulator,
    ResourceState,
    calibration,
    coupling_edges,
    job_failure,
    unique_resources,
)

NOISE = NoiseConfig(kind="parametric", p1=0.001, p2=0.01, readout=0.02)


def rng_for(seed: int, round_: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, round_, 7]))


def resource(**availability) -> ResourceConfig:
    return ResourceConfig(
        name="qpu", qubits=5, noise=NOISE, availability=AvailabilityConfig(**availability)
    )


def run(config: ResourceConfig, rounds: int, seed: int = 0) -> list[ResourceState]:
    sim = ResourceSimulator(config)
    return [sim.step(t, rng_for(seed, t)) for t in range(rounds)]


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"name": "a.b", "qubits": 2}, "pattern"),
        ({"name": "q", "qubits": 2, "executor": "ibm"}, "needs backend"),
        ({"name": "q", "qubits": 3, "coupling": [[0, 3]]}, r"edge \(0, 3\)"),
        ({"name": "q", "qubits": 3, "coupling": [[1, 1]]}, r"edge \(1, 1\)"),
        ({"name": "q", "qubits": 6, "noise": {"kind": "device", "device": "generic:5"}}, "fewer"),
        ({"name": "q", "qubits": 2, "availability": {"outages": [[4, 3]]}}, "outage window"),
        ({"name": "q", "qubits": 2, "availability": {"outages": [[-1, 3]]}}, "outage window"),
        ({"name": "q", "qubits": 2, "availability": {"uptime": 1.5}}, "uptime"),
        ({"name": "q", "qubits": 2, "shots_budget": 0}, "shots_budget"),
        ({"name": "q", "qubits": 2, "speed": 3}, "speed"),
    ],
)
def test_bad_resource_configs_are_rejected(fields, match) -> None:
    with pytest.raises(ValidationError, match=match):
        ResourceConfig(**fields)


def test_unique_resources_rejects_a_repeated_name() -> None:
    a, b = ResourceConfig(name="a", qubits=2), ResourceConfig(name="b", qubits=2)
    assert list(unique_resources([a, b])) == ["a", "b"]
    with pytest.raises(ValueError, match="'a' is used twice"):
        unique_resources([a, b, a])


def test_check_fits() -> None:
    config = ResourceConfig(name="small", qubits=4)
    config.check_fits(4)
    with pytest.raises(QuantumResourceUnavailable, match="small has 4 qubits, the layer needs 5"):
        config.check_fits(5)


@pytest.mark.parametrize(
    ("coupling", "n", "edges"),
    [
        ("line", 4, ((0, 1), (1, 2), (2, 3))),
        ("ring", 4, ((0, 1), (0, 3), (1, 2), (2, 3))),
        ("ring", 2, ((0, 1),)),
        ("full", 3, ((0, 1), (0, 2), (1, 2))),
        ("line", 1, ()),
        (((2, 1), (1, 2), (0, 1)), 3, ((0, 1), (1, 2))),
    ],
)
def test_coupling_edges(coupling, n, edges) -> None:
    assert coupling_edges(coupling, n) == edges


def _connected(edges, n) -> bool:
    seen, todo = {0}, [0]
    while todo:
        a = todo.pop()
        for x, y in edges:
            for u, v in ((x, y), (y, x)):
                if u == a and v not in seen:
                    seen.add(v)
                    todo.append(v)
    return len(seen) == n


@pytest.mark.parametrize("n", [2, 7, 19, 27, 57])
def test_heavy_hex_is_a_connected_degree_three_fragment(n: int) -> None:
    edges = coupling_edges("heavy_hex", n)
    assert all(0 <= a < b < n for a, b in edges)
    degree = np.bincount(np.array(edges).ravel(), minlength=n)
    assert degree.max() <= 3
    assert _connected(edges, n)
    if n == 19:  # the whole distance-3 lattice: 19 qubits, 20 couplers
        assert len(edges) == 20


def test_resource_edges_use_its_qubits() -> None:
    assert ResourceConfig(name="r", qubits=3, coupling="ring").edges() == ((0, 1), (0, 2), (1, 2))


# --------------------------------------------------------------------------- availability


def test_outage_windows_are_honoured_exactly() -> None:
    states = run(resource(outages=[[3, 5], [10, 10]]), rounds=14)
    down = [s.round for s in states if not s.available]
    assert down == [3, 4, 5, 10]
    assert states[4].reason == "outage window [3, 5]"
    assert states[10].reason == "outage window [10, 10]"
    assert all(s.reason is None for s in states if s.available)


def test_uptime_fraction_is_achieved_over_many_rounds() -> None:
    states = run(resource(uptime=0.7), rounds=4000, seed=11)
    fraction = np.mean([s.available for s in states])
    # sd of the fraction: sqrt(0.21 / 4000) ~ 0.0072
    assert abs(fraction - 0.7) < 0.03
    assert {s.reason for s in states if not s.available} == {"random downtime"}


def test_outage_wins_over_uptime() -> None:
    states = run(resource(uptime=0.0, outages=[[2, 2]]), rounds=4)
    assert [s.available for s in states] == [False] * 4
    assert [s.reason for s in states] == ["random downtime"] * 2 + [
        "outage window [2, 2]",
        "random downtime",
    ]


def test_same_seed_same_states_other_seed_other_states() -> None:
    config = resource(uptime=0.8, queue_arrivals=3.0, drift=0.2)
    assert run(config, 30, seed=5) == run(config, 30, seed=5)
    assert run(config, 30, seed=5) != run(config, 30, seed=6)


def test_resume_from_a_state_continues_identically() -> None:
    config = resource(uptime=0.8, queue_arrivals=4.0, service_jobs_per_round=3, drift=0.3)
    full = run(config, 12, seed=2)
    resumed = ResourceSimulator(config, previous=full[5])
    assert [resumed.step(t, rng_for(2, t)) for t in range(6, 12)] == full[6:]


def test_rounds_must_increase() -> None:
    sim = ResourceSimulator(resource())
    sim.step(3, rng_for(0, 3))
    with pytest.raises(ValueError, match="round 3 does not follow round 3"):
        sim.step(3, rng_for(0, 3))


def test_resume_needs_the_same_resource() -> None:
    state = run(resource(), 1)[0]
    other = ResourceConfig(name="other", qubits=5)
    with pytest.raises(ValueError, match="cannot resume resource 'other'"):
        ResourceSimulator(other, previous=state)


# --------------------------------------------------------------------------- queue


def test_no_arrivals_no_queue() -> None:
    states = run(resource(queue_arrivals=0.0, outages=[[1, 2]]), 5)
    assert [(s.queue_length, s.backlog, s.est_wait_s) for s in states] == [(0, 0, 0.0)] * 5


def test_queue_is_poisson_when_served_every_round() -> None:
    states = run(resource(queue_arrivals=4.0), 3000, seed=3)
    queue = np.array([s.queue_length for s in states])
    assert all(s.backlog == 0 for s in states)
    # Poisson(4): mean 4, variance 4; sd of the mean ~ 0.037
    assert abs(queue.mean() - 4.0) < 0.15
    assert abs(queue.var() - 4.0) < 0.5


def test_queue_recursion_with_capacity_and_outages() -> None:
    avail = {"queue_arrivals": 3.0, "service_jobs_per_round": 2, "outages": [[4, 6]]}
    states = run(resource(**avail), 40, seed=9)
    job_wait = 2.0 + 4000 * 2e-4  # overhead + typical shots x seconds per shot
    previous_backlog = 0
    for s in states:
        assert s.queue_length >= previous_backlog  # arrivals are >= 0
        served = min(s.queue_length, 2) if s.available else 0
        assert s.backlog == s.queue_length - served
        assert s.est_wait_s == pytest.approx(s.queue_length * job_wait)
        previous_backlog = s.backlog
    # arrivals 3 > capacity 2: the backlog grows on average (1 per round)
    assert states[-1].backlog > 10


# --------------------------------------------------------------------------- drift


def test_no_drift_keeps_the_calibrated_rates() -> None:
    states = run(resource(uptime=0.5), 20)
    assert {(s.p1, s.p2, s.readout) for s in states} == {(0.001, 0.01, 0.02)}
    assert {s.drift for s in states} == {(0.0, 0.0, 0.0)}


def test_drift_is_a_mean_reverting_walk_of_the_log_rates() -> None:
    theta, sigma = 0.1, 0.1
    states = run(resource(drift=sigma, drift_reversion=theta), 6000, seed=4)
    x = np.array([s.drift for s in states])  # (T, 3)
    np.testing.assert_allclose(np.log([s.p2 for s in states]), np.log(0.01) + x[:, 1], atol=1e-12)
    # AR(1): stationary sd sigma / sqrt(1 - (1 - theta)^2) ~ 0.229, lag-1 correlation 0.9
    np.testing.assert_allclose(x.std(axis=0), sigma / math.sqrt(1 - (1 - theta) ** 2), rtol=0.2)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.08)
    lag1 = np.corrcoef(x[1:, 0], x[:-1, 0])[0, 1]
    assert abs(lag1 - (1 - theta)) < 0.05


def test_full_reversion_forgets_the_previous_round() -> None:
    config = resource(drift=0.5, drift_reversion=1.0)
    sim = ResourceSimulator(config)
    first = sim.step(0, rng_for(0, 0))
    second = sim.step(1, rng_for(0, 1))
    z = rng_for(0, 1)  # replay round 1's draws: uniform, Poisson, then the 3 normals
    z.random(), z.poisson(0.0)
    np.testing.assert_allclose(second.drift, 0.5 * z.standard_normal(3))
    assert first.drift != second.drift


def test_drifted_rates_stay_in_range() -> None:
    noise = NoiseConfig(kind="parametric", p1=0.5, p2=0.9, readout=0.45)
    config = ResourceConfig(
        name="bad", qubits=2, noise=noise, availability=AvailabilityConfig(drift=2.0)
    )
    states = run(config, 200)
    assert max(s.p2 for s in states) == 1.0
    assert max(s.readout for s in states) == 0.5
    assert all(0.0 <= s.p1 <= 1.0 for s in states)


# --------------------------------------------------------------------------- noise config


def test_noise_config_of_a_drifted_parametric_state() -> None:
    noise = NoiseConfig(kind="parametric", p1=0.001, p2=0.01, t1_us=50.0, t2_us=70.0)
    config = ResourceConfig(
        name="q", qubits=2, noise=noise, availability=AvailabilityConfig(drift=0.3)
    )
    state = run(config, 3)[-1]
    drifted = state.noise_config()
    assert drifted.kind == "parametric"
    assert (drifted.p1, drifted.p2, drifted.readout) == (state.p1, state.p2, state.readout)
    assert drifted.p2 != 0.01
    assert (drifted.t1_us, drifted.t2_us) == (50.0, 70.0)
    assert build_noise_model(drifted) is not None


def test_noise_config_of_a_noiseless_resource() -> None:
    state = run(ResourceConfig(name="ideal", qubits=3), 1)[0]
    assert state.noise_config() == NoiseConfig()
    assert (state.p1, state.p2, state.readout) == (0.0, 0.0, 0.0)


def test_device_snapshot_calibration_and_drift() -> None:
    noise = NoiseConfig(kind="device", device="generic:5")
    rates = calibration(noise, seed=0)
    assert 0.0 < rates.p1 < rates.p2 < 0.05
    assert 0.0 < rates.readout < 0.05
    steady = ResourceConfig(name="dev", qubits=5, noise=noise)
    assert run(steady, 1)[0].noise_config() == noise  # undrifted: the snapshot itself
    drifting = steady.model_copy(update={"availability": AvailabilityConfig(drift=0.2)})
    sim = ResourceSimulator(drifting, rates=rates)
    state = sim.step(0, rng_for(0, 0))
    approx = state.noise_config()
    assert approx.kind == "parametric"
    assert approx.p2 == pytest.approx(rates.p2 * math.exp(state.drift[1]))


def test_given_rates_skip_the_calibration() -> None:
    sim = ResourceSimulator(resource(), rates=ErrorRates(p1=0.1, p2=0.2, readout=0.3))
    state = sim.step(0, rng_for(0, 0))
    assert (state.p1, state.p2, state.readout) == (0.1, 0.2, 0.3)


# --------------------------------------------------------------------------- jobs


def test_job_time_and_failures() -> None:
    config = ResourceConfig(
        name="q",
        qubits=2,
        shots_budget=1000,
        availability=AvailabilityConfig(
            seconds_per_shot=0.01, job_overhead_s=1.0, outages=[[1, 1]]
        ),
    )
    up, down = run(config, 2)
    assert up.job_seconds(100) == pytest.approx(2.0)
    assert up.expected_seconds(100) == pytest.approx(up.est_wait_s + 2.0)
    rng = np.random.default_rng(0)
    assert job_failure(up, 1000, rng) is None
    assert job_failure(up, 1001, rng) == "resource q: 1001 shots exceed the budget of 1000"
    assert job_failure(down, 10, rng) == "resource q down: outage window [1, 1]"


def test_transient_failure_rate() -> None:
    state = run(resource(job_failure_rate=0.3), 1)[0]
    rng = np.random.default_rng(1)
    failures = [job_failure(state, 10, rng) for _ in range(5000)]
    assert set(failures) == {None, "resource qpu: transient job failure"}
    # sd of the rate ~ 0.0065
    assert abs(np.mean([f is not None for f in failures]) - 0.3) < 0.03
