"""Differential privacy in a real run: calibrated z, epsilon per round, accuracy at eps 8."""

from __future__ import annotations

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.run import run_experiment

pytestmark = pytest.mark.usefixtures("ray_local")


def _run(tmp_path, *overrides):
    config = load_config(
        REPO / "configs" / "dp.yaml", [f"output.runs_dir={tmp_path / 'runs'}", *overrides]
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return run_experiment(config, tracking_uri=uri), MlflowClient(uri)


def _history(client, run_id, key):
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_central_dp_at_epsilon_8_reaches_85_percent_and_logs_epsilon_every_round(tmp_path):
    summary, client = _run(tmp_path)
    assert summary.final_accuracy >= 0.85
    epsilon = _history(client, summary.run_id, "dp_epsilon")
    assert len(epsilon) == 20
    assert all(a < b for a, b in zip(epsilon, epsilon[1:], strict=False))  # budget is spent
    assert 7.5 < epsilon[-1] <= 8.0  # z was calibrated for exactly this budget
    z = _history(client, summary.run_id, "dp_noise_multiplier")
    assert len(set(z)) == 1 and z[0] > 2.5


def test_local_dp_noises_each_update_and_costs_accuracy(tmp_path):
    summary, client = _run(
        tmp_path,
        "privacy.mode=local",
        "privacy.target_epsilon=null",
        "privacy.noise_multiplier=4.0",
        "federation.rounds=3",
    )
    epsilon = _history(client, summary.run_id, "dp_epsilon")
    assert len(epsilon) == 3 and epsilon[0] > 0
    # each client's noise std 4 * 0.5 on its own update: far noisier than central DP
    assert summary.final_accuracy < 0.85
