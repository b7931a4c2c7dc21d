"""RoundConditions: stragglers out of a round's result, net.* and energy.* metrics, state."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import QUICKSTART

from actors.pool import RoundResult
from federated.energy import EnergyConfig
from federated.messages import ClientFailure, ClientUpdate
from federated.network import NetworkConfig, draw_link
from pipelines.conditions import RoundConditions
from pipelines.config import load_config
from qfl.errors import ConfigError

P = 1000  # parameters: 4,000 bytes each way
NET = NetworkConfig(
    enabled=True,
    down_mbps=0.01,  # 4,000 bytes = 3.2 s down at the median
    up_mbps=0.01,
    latency_ms=10.0,
    bandwidth_sigma=1.0,
    latency_sigma=0.0,
)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _update(k: int, seconds: float = 0.5, path: str = "classical") -> ClientUpdate:
    return ClientUpdate(
        client_id=k,
        round=2,
        num_samples=20,
        loss=0.3,
        delta=np.zeros(P, dtype=np.float32),
        seconds=seconds,
        path=path,
    )


def _total(k: int, seconds: float) -> float:
    """Client k's simulated round by hand: 4P bytes down and up, 10 ms each way, compute."""
    link = draw_link(NET, 0, k)
    down = 8 * 4 * P / (link.down_mbps * 1e6) + 0.010
    up = 8 * 4 * P / (link.up_mbps * 1e6) + 0.010
    return down + seconds + up


def _result(n: int) -> RoundResult:
    failed = ClientFailure(client_id=n, round=2, reason="runner died")
    return RoundResult(updates=[_update(k) for k in range(n)], failures=[failed])


def test_stragglers_leave_the_updates_and_join_the_failures():
    totals = {k: _total(k, 0.5) for k in range(6)}
    deadline = float(np.median(list(totals.values())))
    late = sorted(k for k, v in totals.items() if v > deadline)
    assert 0 < len(late) < 6
    network = NET.model_copy(update={"deadline_s": deadline})
    clock = FakeClock()
    conditions = RoundConditions(network, EnergyConfig(), seed=0, epochs=1, clock=clock)
    result = conditions.apply(2, 4 * P, _result(6))
    assert [u.client_id for u in result.updates] == [k for k in range(6) if k not in late]
    assert [f.client_id for f in result.failures] == sorted([*late, 6])
    stragglers = [f for f in result.failures if f.reason.startswith("straggler")]
    assert [f.client_id for f in stragglers] == late
    assert all(f.round == 2 for f in stragglers)
    clock.now += 4.0  # aggregation and evaluation: 4 s of driver time
    metrics = conditions.metrics()
    assert metrics["net.stragglers"] == len(late)
    assert metrics["net.sim_round_s"] == deadline
    assert metrics["net.sim_clock_s"] == deadline
    # the stragglers trained too: six clients' energy, plus the server's 4 s
    assert metrics["energy.classical_kwh"] == pytest.approx(6 * 0.5 * 15 / 3.6e6)
    assert metrics["energy.server_kwh"] == pytest.approx(4.0 * 15 / 3.6e6)
    assert metrics["energy.total_kwh"] == pytest.approx(metrics["energy.kwh"])
    assert conditions.metrics() == {}  # once per applied round


def test_without_a_deadline_the_clock_sums_the_slowest_clients():
    conditions = RoundConditions(NET, EnergyConfig(enabled=False), seed=0, epochs=1)
    expected = 0.0
    for seconds in (0.5, 2.0):
        result = RoundResult(updates=[_update(k, seconds) for k in range(4)])
        assert conditions.apply(0, 4 * P, result) is result  # nothing dropped
        metrics = conditions.metrics()
        expected += max(_total(k, seconds) for k in range(4))
        assert metrics["net.sim_clock_s"] == pytest.approx(expected)
        assert not any(key.startswith("energy.") for key in metrics)
    assert conditions.state()["sim_clock_s"] == pytest.approx(expected)


def test_the_running_totals_survive_a_checkpoint():
    first = RoundConditions(NET, EnergyConfig(), seed=0, epochs=1)
    first.apply(0, 4 * P, RoundResult(updates=[_update(0, 3600.0)]))
    first.metrics()
    state = first.state()
    assert state["total_kwh"] == pytest.approx(0.015, rel=1e-3)  # an hour of one core, 15 W
    resumed = RoundConditions(NET, EnergyConfig(), seed=0, epochs=1, state=state)
    resumed.apply(1, 4 * P, RoundResult(updates=[_update(0, 3600.0)]))
    metrics = resumed.metrics()
    assert metrics["energy.total_kwh"] == pytest.approx(0.030, rel=1e-3)
    assert metrics["net.sim_clock_s"] == pytest.approx(2 * _total(0, 3600.0))


def test_the_default_config_changes_no_round_and_accounts_energy():
    config = load_config(QUICKSTART)
    assert not config.network.enabled and config.energy.enabled
    conditions = RoundConditions.from_config(config)
    result = RoundResult(updates=[_update(0, 1.0, "quantum"), _update(1, 2.0)])
    assert conditions.apply(0, 4 * P, result) is result
    metrics = conditions.metrics()
    assert not any(key.startswith("net.") for key in metrics)
    assert metrics["energy.quantum_sim_kwh"] == pytest.approx(15 / 3.6e6)
    assert metrics["energy.classical_kwh"] == pytest.approx(30 / 3.6e6)


def test_everything_off_is_the_identity():
    off = RoundConditions(NetworkConfig(), EnergyConfig(enabled=False), seed=0, epochs=1)
    result = _result(3)
    assert off.apply(0, 4 * P, result) is result
    assert off.metrics() == {}


def test_joules_for_an_unknown_resource_is_a_config_error():
    with pytest.raises(ConfigError, match=r"energy.resource_joules_per_shot: 'qpu'"):
        load_config(QUICKSTART, ["energy.resource_joules_per_shot={qpu: 2.5}"])
    with pytest.raises(ConfigError, match=r"network: deadline_s needs enabled"):
        load_config(QUICKSTART, ["network.deadline_s=2.0"])
