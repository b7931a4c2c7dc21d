"""The README's promise: `qfl run configs/quickstart.yaml`, through the real CLI and Ray."""

from __future__ import annotations

import os
import shutil
import subprocess

from conftest import QUICKSTART, REPO
from mlflow.tracking import MlflowClient

METRICS = (
    "test_accuracy",
    "test_loss",
    "mean_client_loss",
    "participants",
    "failed_clients",
    "bytes_down",
    "bytes_up",
    "round_seconds",
)


def test_quickstart_through_cli_records_every_round_in_mlflow(tmp_path):
    qfl = shutil.which("qfl")
    assert qfl, "the qfl console script is not installed"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [qfl, "run", str(QUICKSTART)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "final test accuracy" in proc.stdout
    # The default store is ./mlflow.db in the working directory.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    for name in METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == list(range(1, 11)), name
    accuracy = {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_accuracy")
    }
    assert accuracy[10] >= 0.90
    assert run.data.params["federation.rounds"] == "10"
    assert run.data.params["data.partition"] == "dirichlet"
    assert run.data.tags["seed"] == "0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model.pt", "convergence.png", "rounds.jsonl"} <= artifacts
    run_dir = tmp_path / "runs" / run.info.run_id
    assert (run_dir / "checkpoint.npz").is_file()
    assert run.info.run_id in proc.stdout
    assert (REPO / "configs").is_dir()
