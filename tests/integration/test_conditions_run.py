"""Simulated network and energy in real runs: stragglers dropped and recorded, two clocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import QUICKSTART, REPO
from mlflow.tracking import MlflowClient

from federated.network import client_timing, compute_seconds, draw_link
from ledger.records import RoundOpen, Update
from ledger.store import open_readonly
from pipelines.checkpoint import load_checkpoint, read_rounds
from pipelines.config import ExperimentConfig, load_config
from pipelines.run import experiment_data, run_experiment

pytestmark = pytest.mark.usefixtures("ray_local")

STRAGGLERS = REPO / "configs" / "stragglers.yaml"
ROUNDS = 3


def _run(tmp_path, path, *overrides):
    config = load_config(
        path, [f"federation.rounds={ROUNDS}", f"output.runs_dir={tmp_path / 'runs'}", *overrides]
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return config, run_experiment(config, tracking_uri=uri), MlflowClient(uri)


def _history(client, run_id, key) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _examples(config: ExperimentConfig) -> list[int]:
    """Each client's training examples, from the same partition the run made."""
    data = experiment_data(config)
    return [len(ix) for ix in data.client_indices]


def _modelled_totals(config: ExperimentConfig, bytes_down: int, bytes_up: int) -> list[float]:
    """Each client's simulated round by hand: its drawn link, the recorded bytes, compute
    modelled from its examples (network.seconds_per_example)."""
    totals = []
    for k, examples in enumerate(_examples(config)):
        link = draw_link(config.network, config.seed, k)
        compute = compute_seconds(
            config.network, link, measured_s=0.0, examples=examples, epochs=config.train.epochs
        )
        timing = client_timing(link, bytes_down=bytes_down, bytes_up=bytes_up, compute_s=compute)
        totals.append(timing.total_s)
    return totals


def test_a_tight_deadline_drops_and_records_exactly_the_late_clients(tmp_path):
    config, summary, client = _run(tmp_path, STRAGGLERS)
    deadline = config.network.deadline_s
    rounds = read_rounds(summary.run_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    per_client = rounds[0]["bytes_down"] // config.federation.per_round  # w_t, float32
    totals = _modelled_totals(config, per_client, per_client)  # an update is w_t's size
    with open_readonly(summary.ledger_path) as store:
        blocks = list(store.blocks())
    sampled = {
        tx.round: tx.sampled for b in blocks for tx in b.transactions if isinstance(tx, RoundOpen)
    }
    admitted = {}
    for block in blocks:
        for tx in block.transactions:
            if isinstance(tx, Update):
                admitted.setdefault(tx.round, set()).add(tx.client_id)
    counts = []
    for t, record in enumerate(rounds):
        late = sorted(k for k in sampled[t] if totals[k] > deadline)
        on_time = sorted(set(sampled[t]) - set(late))
        stragglers = [f for f in record["failures"] if f["reason"].startswith("straggler")]
        assert [f["client_id"] for f in stragglers] == late
        assert record["participants"] == len(on_time) == record["accepted"]
        assert admitted.get(t, set()) == set(on_time)  # the ledger never saw a straggler
        expected_round = deadline if late else max(totals[k] for k in on_time)
        assert record["extra"]["net.sim_round_s"] == pytest.approx(expected_round)
        assert record["extra"]["net.stragglers"] == len(late)
        counts.append(len(late))
    assert sum(counts) > 0, "the deadline should drop someone in three rounds"
    assert all(c < config.federation.per_round for c in counts)

    run_id = summary.run_id
    assert _history(client, run_id, "net.stragglers") == counts
    assert _history(client, run_id, "failed_clients") == counts
    sim_round = _history(client, run_id, "net.sim_round_s")
    assert _history(client, run_id, "net.sim_clock_s") == pytest.approx(np.cumsum(sim_round))
    assert len(_history(client, run_id, "round_seconds")) == ROUNDS  # the real clock too
    accuracy = _history(client, run_id, "test_accuracy")
    assert len(accuracy) == ROUNDS and all(math.isfinite(a) for a in accuracy)
    assert summary.final_accuracy > 0.5  # the on-time clients still train the model
    kwh = _history(client, run_id, "energy.kwh")
    assert all(v > 0 for v in kwh)
    assert _history(client, run_id, "energy.total_kwh") == pytest.approx(np.cumsum(kwh))
    co2 = _history(client, run_id, "energy.co2_kg")
    assert co2 == pytest.approx([v * config.energy.grid_g_per_kwh / 1000 for v in kwh])
    assert _history(client, run_id, "energy.quantum_sim_kwh") == [0.0] * ROUNDS  # classical
    state = load_checkpoint(summary.run_dir).state["conditions"]
    assert state["sim_clock_s"] == pytest.approx(sum(sim_round))
    assert state["total_kwh"] == pytest.approx(sum(kwh))


def test_without_a_deadline_the_simulated_clock_sums_each_rounds_slowest_client(tmp_path):
    config, summary, client = _run(
        tmp_path,
        STRAGGLERS,
        "network.deadline_s=null",
        "ledger.enabled=false",
        "federation.clients_per_round=null",
        "federation.sample_fraction=1.0",
    )
    rounds = read_rounds(summary.run_dir)
    per_client = rounds[0]["bytes_down"] // config.federation.clients
    assert rounds[0]["bytes_up"] == per_client * config.federation.clients
    slowest = max(_modelled_totals(config, per_client, per_client))  # every client, every round
    clock = _history(client, summary.run_id, "net.sim_clock_s")
    assert clock == pytest.approx([slowest * (t + 1) for t in range(ROUNDS)])
    assert _history(client, summary.run_id, "net.stragglers") == [0.0] * ROUNDS
    assert all(r["failures"] == [] for r in rounds)


@pytest.mark.slow  # a full run: keeps the default suite under 25 min
def test_measured_compute_puts_the_real_training_time_on_the_simulated_clock(tmp_path):
    """Quickstart, network on, no deadline, compute measured: each round's simulated time
    lies between its slowest transfers alone and those plus the real round's seconds."""
    config, summary, client = _run(
        tmp_path,
        QUICKSTART,
        "network.enabled=true",
        "network.down_mbps=0.5",
        "network.up_mbps=0.1",
        "ledger.enabled=false",
    )
    rounds = read_rounds(summary.run_dir)
    per_client = rounds[0]["bytes_down"] // config.federation.clients
    links = [draw_link(config.network, config.seed, k) for k in range(config.federation.clients)]
    transfers = max(
        client_timing(link, bytes_down=per_client, bytes_up=per_client, compute_s=0.0).total_s
        for link in links
    )
    for record in rounds:
        sim = record["extra"]["net.sim_round_s"]
        assert transfers < sim < transfers + record["seconds"]
        assert record["extra"]["energy.classical_kwh"] > 0
    clock = _history(client, summary.run_id, "net.sim_clock_s")
    assert clock[-1] == pytest.approx(sum(r["extra"]["net.sim_round_s"] for r in rounds))


@pytest.mark.slow  # a full run: keeps the default suite under 25 min
def test_stragglers_under_secure_aggregation_are_dropouts_the_survivors_cover(tmp_path):
    """secagg.yaml (10 clients, threshold 6) on a slow network: clients 1 and 9 miss the 8 s
    deadline; their masked inputs stay out of the sum and the round still unmasks."""
    config, summary, client = _run(
        tmp_path,
        REPO / "configs" / "secagg.yaml",
        "federation.rounds=2",
        "network.enabled=true",
        "network.down_mbps=0.1",
        "network.up_mbps=0.05",
        "network.bandwidth_sigma=1.0",
        "network.seconds_per_example=0.001",
        "network.deadline_s=8.0",
    )
    rounds = read_rounds(summary.run_dir)
    per_client = rounds[0]["bytes_down"] // config.federation.clients
    totals = _modelled_totals(config, per_client, per_client)
    late = [k for k, total in enumerate(totals) if total > 8.0]
    assert late == [1, 9]  # by hand from the drawn links (seed 0)
    for record in rounds:
        stragglers = [f["client_id"] for f in record["failures"] if "straggler" in f["reason"]]
        assert stragglers == late
        assert record["extra"]["secagg_failed"] == 0.0
        assert record["extra"]["secagg_included"] == 8.0
        assert record["extra"]["secagg_dropped"] == 2.0
    assert _history(client, summary.run_id, "net.stragglers") == [2.0, 2.0]
    assert math.isfinite(summary.final_accuracy) and summary.final_accuracy > 0.3
