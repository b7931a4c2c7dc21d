"""Federated runs with quantum models on a real local Ray (issue 4's accuracy targets)."""

from __future__ import annotations

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.run import run_experiment

pytestmark = pytest.mark.usefixtures("ray_local")


def _run(tmp_path, config_name, *overrides):
    config = load_config(
        REPO / "configs" / config_name, [f"output.runs_dir={tmp_path / 'runs'}", *overrides]
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return run_experiment(config, tracking_uri=uri), uri


def test_vqc_on_exact_executor_reaches_095(tmp_path):
    summary, uri = _run(tmp_path, "digits-vqc.yaml")
    assert summary.final_accuracy >= 0.95
    params = MlflowClient(uri).get_run(summary.run_id).data.params
    assert params["quantum.executor"] == "exact"
    assert params["quantum.qubits"] == "8"


def test_vqc_on_noisy_aer_reaches_090(tmp_path):
    # 3 of the config's 4 rounds: 0.983 measured (4 rounds: 1.00), 30 s less in CI
    summary, uri = _run(tmp_path, "digits-vqc-noisy.yaml", "federation.rounds=3")
    assert summary.final_accuracy >= 0.90
    params = MlflowClient(uri).get_run(summary.run_id).data.params
    assert params["quantum.noise.p2"] == "0.01"
    assert params["quantum.shots"] == "1024"


def test_hybrid_model_on_ten_digits_reaches_090(tmp_path):
    summary, _ = _run(tmp_path, "digits-hybrid.yaml")
    assert summary.final_accuracy >= 0.90
