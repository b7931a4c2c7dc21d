"""MLflow tracking against a real sqlite store: precedence, batching, status."""

from __future__ import annotations

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from pipelines.tracking import DEFAULT_TRACKING_URI, Tracker, git_commit, resolve_tracking_uri
from qfl.errors import RunError


@pytest.mark.parametrize(
    ("flag", "env", "configured", "expected"),
    [
        ("http://flag", "http://env", "http://cfg", "http://flag"),
        (None, "http://env", "http://cfg", "http://env"),
        (None, None, "http://cfg", "http://cfg"),
        (None, "", None, DEFAULT_TRACKING_URI),
        (None, None, None, "sqlite:///mlflow.db"),
    ],
)
def test_tracking_uri_precedence(flag, env, configured, expected):
    assert resolve_tracking_uri(flag, env, configured) == expected


def test_tracker_logs_params_in_batches_metrics_per_step_and_status(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.start(uri, "exp", "name", {"seed": "7"})
    params = {f"p.{i:03d}": str(i) for i in range(250)}  # more than one MLflow batch
    tracker.log_params(params)
    for step in (1, 2, 3):
        tracker.log_metrics(step, {"acc": step / 10, "loss": 1 / step}, timestamp_ms=step)
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")
    tracker.log_artifact(artifact)
    tracker.end("FINISHED")
    again = Tracker.start(uri, "exp", None, {})  # the experiment is reused, not duplicated
    assert again.experiment_id == tracker.experiment_id
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == params
    assert run.data.tags["seed"] == "7"
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "acc")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
    ]
    assert [a.path for a in MlflowClient(uri).list_artifacts(tracker.run_id)] == ["note.txt"]


def test_unusable_store_is_a_run_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(RunError, match="cannot open an MLflow run"):
        Tracker.start(f"sqlite:///{blocker}/sub/mlflow.db", "exp", None, {})


def test_git_commit_is_a_sha_in_a_repository_and_none_outside(tmp_path):
    assert git_commit(tmp_path) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert git_commit(repo) == head.stdout.strip()
    assert len(head.stdout.strip()) == 40
