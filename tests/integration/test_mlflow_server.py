"""A real `mlflow server` on 127.0.0.1: a run tracked over HTTP and read back."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from conftest import QUICKSTART
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.run import run_experiment


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    mlflow = shutil.which("mlflow")
    assert mlflow, "the mlflow command is not installed"
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited: {(tmp_path / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("mlflow server did not answer /health within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.mark.usefixtures("ray_local")
def test_run_tracked_on_mlflow_server_over_http(tmp_path, mlflow_server):
    config = load_config(
        QUICKSTART,
        ["federation.rounds=2", f"output.runs_dir={tmp_path / 'runs'}", "tracking.experiment=http"],
    )
    summary = run_experiment(config, tracking_uri=mlflow_server)
    client = MlflowClient(mlflow_server)
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(summary.run_id, "test_accuracy")]
    assert sorted(steps) == [1, 2]
    assert run.data.params["federation.rounds"] == "2"
    assert run.data.tags["final_weights_sha256"] == summary.weights_hash
    # Artifacts went through the server's proxy into its artifact store.
    names = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"model.pt", "convergence.png", "config.yaml"} <= names
    assert any((tmp_path / "artifacts").rglob("convergence.png"))
