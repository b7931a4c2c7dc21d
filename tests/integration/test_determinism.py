"""Same config and seed, same final weights, whatever the number of runner actors."""

from __future__ import annotations

import pytest
from conftest import QUICKSTART

from pipelines.config import load_config
from pipelines.run import run_experiment


def _run(tmp_path, name, *overrides):
    config = load_config(
        QUICKSTART,
        [
            "federation.rounds=3",
            f"output.runs_dir={tmp_path / 'runs'}",
            f"tracking.run_name={name}",
            *overrides,
        ],
    )
    return run_experiment(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.usefixtures("ray_local")
def test_same_seed_same_weights_hash_twice_in_a_row(tmp_path):
    first = _run(tmp_path, "a")
    second = _run(tmp_path, "b")
    other_runners = _run(tmp_path, "c", "ray.runners=1")
    other_seed = _run(tmp_path, "d", "seed=1")
    assert first.run_id != second.run_id
    assert first.weights_hash == second.weights_hash
    assert first.final_accuracy == second.final_accuracy
    assert other_runners.weights_hash == first.weights_hash
    assert other_seed.weights_hash != first.weights_hash
