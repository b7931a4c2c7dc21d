"""Issue 6's acceptance on digits and real Ray: outages, Byzantine clients, the hybrid rule."""

from __future__ import annotations

import json

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from ledger.store import open_readonly
from ledger.verify import verify_ledger
from pipelines.config import load_config
from pipelines.run import run_experiment

pytestmark = pytest.mark.usefixtures("ray_local")

# outage.yaml made small enough for CI: four digits, four clients, one local epoch
SMALL_OUTAGE = (
    "data.classes=[0,1,2,3]",
    "federation.clients=4",
    "federation.rounds=6",
    "train.epochs=1",
    "quantum.shots=256",
)
NO_OUTAGE = "resources[0].availability.outages=[]"


def _run(tmp_path, name, config_name, *overrides):
    folder = tmp_path / name
    config = load_config(
        REPO / "configs" / config_name, [f"output.runs_dir={folder / 'runs'}", *overrides]
    )
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return run_experiment(config, tracking_uri=uri), uri


def _history(uri, run_id, key):
    return [m.value for m in sorted(MlflowClient(uri).get_metric_history(run_id, key), key=_step)]


def _step(metric):
    return metric.step


def _fallbacks(ledger_path):
    store = open_readonly(ledger_path)
    try:
        txs = [tx for block in store.blocks() for tx in block.transactions]
    finally:
        store.close()
    return [tx for tx in txs if tx.kind == "fallback"]


# --------------------------------------------------------------------------- outage


@pytest.fixture(scope="module")
def outage_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("outage")
    with_outage = _run(tmp, "outage", "outage.yaml", *SMALL_OUTAGE)
    without = _run(tmp, "steady", "outage.yaml", *SMALL_OUTAGE, NO_OUTAGE)
    return with_outage, without


def test_outage_run_completes_within_two_points_of_the_steady_run(outage_runs):
    (outage, _), (steady, _) = outage_runs
    assert outage.rounds == steady.rounds == 6
    assert steady.final_accuracy >= 0.9
    assert abs(outage.final_accuracy - steady.final_accuracy) <= 0.02


def test_fallbacks_are_on_the_ledger_with_their_reasons(outage_runs):
    (summary, _), _ = outage_runs
    assert verify_ledger(summary.ledger_path, head=bytes.fromhex(summary.ledger_head))
    fallbacks = _fallbacks(summary.ledger_path)
    # outages [0, 1], [4, 5]: every client of those four rounds falls back, none otherwise
    assert sorted({f.round for f in fallbacks}) == [0, 1, 4, 5]
    assert len(fallbacks) == 4 * 4
    assert {f.resource for f in fallbacks} == {"qpu_a"}
    assert all("outage window" in f.reason for f in fallbacks)


def test_mlflow_counts_paths_and_resource_state_per_round(outage_runs):
    (summary, uri), _ = outage_runs
    run = summary.run_id
    down = [0.0, 0.0, 1.0, 1.0, 0.0, 0.0]  # the outage windows, round by round
    assert _history(uri, run, "resource.qpu_a.available") == down
    assert _history(uri, run, "updates.quantum") == [4.0 * up for up in down]
    assert _history(uri, run, "updates.fallback") == [4.0 * (1 - up) for up in down]
    assert _history(uri, run, "updates.classical") == [0.0] * 6
    assert len(_history(uri, run, "client_loss.hybrid")) == 6
    assert len(_history(uri, run, "resource.qpu_a.queue_length")) == 6
    rounds = [json.loads(line) for line in (summary.run_dir / "rounds.jsonl").open()]
    reasons = [f["reason"] for r in rounds for f in r["fallbacks"]]
    assert len(reasons) == 16 and all("outage window" in reason for reason in reasons)


def test_a_resource_down_for_the_whole_run_gives_an_all_classical_run(tmp_path):
    summary, uri = _run(
        tmp_path,
        "down",
        "outage.yaml",
        *SMALL_OUTAGE,
        "federation.rounds=3",
        "resources[0].availability.outages=[[0,100]]",
    )
    assert summary.rounds == 3
    assert _history(uri, summary.run_id, "updates.quantum") == [0.0, 0.0, 0.0]
    assert _history(uri, summary.run_id, "updates.fallback") == [4.0, 4.0, 4.0]
    assert summary.final_accuracy > 0.5


# --------------------------------------------------------------------------- Byzantine


@pytest.fixture(scope="module")
def byzantine_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byzantine")
    # 6 of the config's 10 rounds: clean 0.916, FedAvg 0.122, trimmed mean 0.902
    short = "federation.rounds=6"
    clean = _run(tmp, "clean", "byzantine.yaml", short, "attack.kind=none", "attack.fraction=0")
    fedavg = _run(tmp, "fedavg", "byzantine.yaml", short, "aggregation.rule=fedavg")
    trimmed = _run(tmp, "trimmed", "byzantine.yaml", short)
    return clean[0], fedavg[0], trimmed[0]


def test_trimmed_mean_stays_within_three_points_of_the_clean_run(byzantine_runs):
    clean, _, trimmed = byzantine_runs
    assert clean.final_accuracy >= 0.9
    assert trimmed.final_accuracy >= clean.final_accuracy - 0.03


def test_fedavg_under_the_same_attack_loses_more_than_ten_points(byzantine_runs):
    clean, fedavg, _ = byzantine_runs
    assert fedavg.final_accuracy < clean.final_accuracy - 0.10


# --------------------------------------------------------------------------- hybrid rule


def test_hybrid_rule_beats_fedavg_when_half_the_quantum_clients_are_very_noisy(tmp_path):
    # 4 of the config's 6 rounds: hybrid 0.751, FedAvg 0.503 (6 rounds: 0.912, 0.740)
    hybrid, uri = _run(tmp_path, "hybrid", "noisy-half.yaml", "federation.rounds=4")
    fedavg, _ = _run(
        tmp_path, "fedavg", "noisy-half.yaml", "federation.rounds=4", "aggregation.rule=fedavg"
    )
    assert hybrid.final_accuracy > fedavg.final_accuracy + 0.05
    assert _history(uri, hybrid.run_id, "updates.quantum") == [6.0] * 4
    # Eq. 7 shrinks the very noisy updates' quantum deltas
    assert min(_history(uri, hybrid.run_id, "agg_min_shrink")) < 0.5


# --------------------------------------------------------------------------- fallback reasons


def _fallback_reasons(summary):
    return {f.reason for f in _fallbacks(summary.ledger_path)}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # the resource's availability model fails every job it runs
        (["resources[0].availability.job_failure_rate=0.999"], "transient job failure"),
        # a device far noisier than the error-rate threshold the scheduler accepts
        (["resources[0].noise.p2=0.3", "scheduler.max_p2=0.1"], "above scheduler.max_p2"),
        # every quantum job takes longer than the allowed time
        (["scheduler.quantum_timeout_s=0.001"], "timeout"),
        # hybrid verification: a check no multi-step, shot-noisy update can pass (cosine
        # 0.9999 with the exact one-step gradient) flags every quantum update as suspect
        (["crosscheck={min_cosine: 0.9999}"], "cross-check"),
    ],
    ids=["job-failure", "error-rate", "timeout", "cross-check"],
)
def test_a_failing_quantum_job_falls_back_with_its_reason(tmp_path, overrides, expected):
    summary, uri = _run(
        tmp_path,
        "fallback",
        "outage.yaml",
        *SMALL_OUTAGE,
        "federation.rounds=1",
        "resources[0].availability.outages=[]",
        *overrides,
    )
    assert summary.rounds == 1
    reasons = _fallback_reasons(summary)
    assert reasons and all(expected in reason for reason in reasons), reasons
    fallbacks = _history(uri, summary.run_id, "updates.fallback")
    assert sum(fallbacks) == len(_fallbacks(summary.ledger_path)) > 0


def test_heterogeneous_depth_trains_the_shallow_resource_on_one_layer(tmp_path):
    summary, uri = _run(tmp_path, "hetero", "heterogeneous-depth.yaml", "federation.rounds=3")
    assert summary.rounds == 3
    # a ring of 2+ layers routed onto the shallow device's line exceeds its depth limit
    assert _history(uri, summary.run_id, "layers.shallow") == [1.0] * 3
    assert _history(uri, summary.run_id, "layers.deep") == [3.0] * 3
    assert _history(uri, summary.run_id, "updates.quantum") == [4.0] * 3
    assert summary.final_accuracy > 0.4
