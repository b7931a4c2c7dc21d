"""The simulated network: drawn links, transfer and round times, stragglers."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from federated.messages import ClientUpdate
from federated.network import (
    ClientLink,
    ClientTiming,
    NetworkConfig,
    NetworkModel,
    client_timing,
    compute_seconds,
    draw_link,
    round_timing,
    transfer_seconds,
)

ON = NetworkConfig(enabled=True)


def _update(client_id: int, *, params: int, seconds: float, samples: int = 10) -> ClientUpdate:
    return ClientUpdate(
        client_id=client_id,
        round=0,
        num_samples=samples,
        loss=0.5,
        delta=np.zeros(params, dtype=np.float32),
        seconds=seconds,
    )


@pytest.mark.parametrize(
    ("nbytes", "mbps", "latency_s", "expected"),
    [
        (1_000_000, 8.0, 0.05, 1.05),  # 8e6 bits over 8e6 bit/s, plus 50 ms
        (250_000, 10.0, 0.02, 0.22),  # 2e6 bits / 1e7 bit/s = 0.2 s
        (0, 1.0, 0.1, 0.1),  # latency only
        (125_000, 1.0, 0.0, 1.0),  # one megabit at one megabit per second
    ],
)
def test_transfer_seconds_is_bits_over_bandwidth_plus_latency(nbytes, mbps, latency_s, expected):
    assert transfer_seconds(nbytes, mbps, latency_s) == pytest.approx(expected, rel=1e-12)


def test_client_timing_adds_download_compute_and_upload():
    link = ClientLink(client_id=3, down_mbps=10.0, up_mbps=2.0, latency_s=0.02, speed=1.0)
    timing = client_timing(link, bytes_down=250_000, bytes_up=50_000, compute_s=1.5)
    assert timing.client_id == 3
    assert timing.download_s == pytest.approx(0.22)  # 2e6 bits / 1e7 + 0.02
    assert timing.upload_s == pytest.approx(0.22)  # 4e5 bits / 2e6 + 0.02
    assert timing.total_s == pytest.approx(1.94)


def test_draws_are_fixed_per_seed_and_client_whatever_the_order():
    config = NetworkConfig(enabled=True, compute_sigma=0.3)
    first = NetworkModel(config, seed=7)
    forward = [first.link(k) for k in range(6)]
    backward = NetworkModel(config, seed=7)
    assert [backward.link(k) for k in reversed(range(6))][::-1] == forward
    assert draw_link(config, 7, 4) == forward[4]
    assert first.link(4) is first.link(4)  # drawn once, then cached
    other = [NetworkModel(config, seed=8).link(k) for k in range(6)]
    assert all(a.down_mbps != b.down_mbps for a, b in zip(forward, other, strict=True))
    assert len({link.down_mbps for link in forward}) == 6  # clients differ


def test_sigma_zero_gives_every_client_the_medians():
    config = NetworkConfig(
        enabled=True,
        down_mbps=40.0,
        up_mbps=4.0,
        latency_ms=30.0,
        bandwidth_sigma=0.0,
        latency_sigma=0.0,
        compute_scale=2.0,
    )
    for k in range(5):
        link = draw_link(config, 0, k)
        assert (link.down_mbps, link.up_mbps, link.speed) == (40.0, 4.0, 2.0)
        assert link.latency_s == pytest.approx(0.03)


def test_draws_are_lognormal_around_the_configured_medians():
    config = NetworkConfig(
        enabled=True, down_mbps=20.0, up_mbps=5.0, latency_ms=50.0, bandwidth_sigma=0.5
    )
    links = [draw_link(config, 1, k) for k in range(4000)]
    down = np.array([link.down_mbps for link in links])
    latency = np.array([link.latency_s for link in links])
    assert np.median(down) == pytest.approx(20.0, rel=0.05)
    assert np.median([link.up_mbps for link in links]) == pytest.approx(5.0, rel=0.05)
    assert np.median(latency) == pytest.approx(0.05, rel=0.05)
    assert np.std(np.log(down)) == pytest.approx(0.5, rel=0.05)
    assert all(link.speed == 1.0 for link in links)  # compute_sigma 0


def test_compute_seconds_measured_or_modelled_times_the_clients_speed():
    link = ClientLink(client_id=0, down_mbps=1.0, up_mbps=1.0, latency_s=0.0, speed=1.5)
    measured = compute_seconds(ON, link, measured_s=2.0, examples=100, epochs=3)
    assert measured == pytest.approx(3.0)
    per_example = NetworkConfig(enabled=True, seconds_per_example=0.01)
    modelled = compute_seconds(per_example, link, measured_s=2.0, examples=100, epochs=3)
    assert modelled == pytest.approx(100 * 3 * 0.01 * 1.5)


def _timing(client_id: int, total: float) -> ClientTiming:
    return ClientTiming(client_id=client_id, download_s=0.0, compute_s=total, upload_s=0.0)


def test_stragglers_are_exactly_the_clients_past_the_deadline():
    timings = [_timing(4, 9.0), _timing(1, 10.0), _timing(7, 10.5), _timing(2, 30.0)]
    rt = round_timing(timings, deadline_s=10.0)
    assert rt.stragglers == (2, 7)  # 10.0 is on time
    assert rt.round_s == 10.0  # the server waited until the deadline
    assert [t.client_id for t in rt.timings] == [1, 2, 4, 7]


def test_without_stragglers_the_round_takes_its_slowest_client():
    timings = [_timing(0, 3.0), _timing(1, 8.5), _timing(2, 1.0)]
    assert round_timing(timings, deadline_s=None).round_s == 8.5
    assert round_timing(timings, deadline_s=None).stragglers == ()
    assert round_timing(timings, deadline_s=9.0).round_s == 8.5
    assert round_timing([], deadline_s=5.0).round_s == 0.0


def test_round_metrics_average_the_transfers():
    timings = [
        ClientTiming(client_id=0, download_s=1.0, compute_s=2.0, upload_s=3.0),
        ClientTiming(client_id=1, download_s=2.0, compute_s=9.0, upload_s=5.0),
    ]
    metrics = round_timing(timings, deadline_s=7.0).metrics()
    assert metrics == {
        "net.sim_round_s": 7.0,
        "net.download_s_mean": 1.5,
        "net.upload_s_mean": 4.0,
        "net.stragglers": 1.0,
    }


def test_model_round_times_each_update_on_its_own_link():
    config = NetworkConfig(enabled=True, deadline_s=1.0, seconds_per_example=0.001)
    model = NetworkModel(config, seed=3)
    updates = [_update(k, params=25_000, seconds=0.1, samples=50 * (k + 1)) for k in range(4)]
    rt = model.round(updates, bytes_down=100_000, epochs=2)
    for update, timing in zip(updates, rt.timings, strict=True):
        link = draw_link(config, 3, update.client_id)
        down = 8 * 100_000 / (link.down_mbps * 1e6) + link.latency_s
        up = 8 * 100_000 / (link.up_mbps * 1e6) + link.latency_s  # 25,000 float32
        compute = update.num_samples * 2 * 0.001 * link.speed
        assert timing.total_s == pytest.approx(down + compute + up)
    late = tuple(t.client_id for t in rt.timings if t.total_s > 1.0)
    assert rt.stragglers == late


def test_a_deadline_needs_the_network_enabled():
    with pytest.raises(ValidationError, match="deadline_s needs enabled"):
        NetworkConfig(deadline_s=5.0)
    with pytest.raises(ValidationError):
        NetworkConfig(enabled=True, down_mbps=0.0)
