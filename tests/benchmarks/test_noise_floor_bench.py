"""NF benchmark: Eq. 8's loss floor grows with the quantum noise variance (1 / shots).

The floor measurement, the Eq. 8 fit and the plot on synthetic curves (fast); the
whole benchmark on real runs only with `pytest -m slow`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.run import RoundRecord, experiment_data

SCRIPT = REPO / "benchmarks" / "noise_floor.py"
CONFIG = REPO / "configs" / "noise-floor.yaml"


@pytest.fixture(scope="module")
def nf():
    spec = importlib.util.spec_from_file_location("noise_floor_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def synthetic_curve(nf, shots, rounds=20, a=0.3, b=0.4, rng=None):
    """F(w_t) = floor + (1.2 - floor) 0.7^t, floor = a + b / S, plus small noise."""
    floor = a + (0.0 if shots is None else b / shots)
    t = np.arange(1, rounds + 1)
    losses = floor + (1.2 - floor) * 0.7**t
    if rng is not None:
        losses = losses + rng.normal(0.0, 1e-3, rounds)
    return nf.Curve(shots, tuple(int(r) for r in t), tuple(losses), tuple(losses + 0.05))


def test_loss_floor_is_the_mean_of_the_last_rounds(nf):
    assert nf.loss_floor([5.0, 3.0, 1.0, 2.0, 3.0], 3) == pytest.approx(2.0)
    assert nf.loss_floor([0.4], 1) == pytest.approx(0.4)


@pytest.mark.parametrize(("losses", "last"), [([1.0, 2.0], 3), ([1.0], 0)])
def test_loss_floor_rejects_too_few_rounds(nf, losses, last):
    with pytest.raises(ValueError, match="round"):
        nf.loss_floor(losses, last)


def test_fit_recovers_the_eq8_line_in_inverse_shots(nf):
    shots = [4, 16, 64, None]
    floors = [0.25 + 0.8 / s if s else 0.25 for s in shots]
    a, b = nf.fit_floor(shots, floors)
    assert a == pytest.approx(0.25)
    assert b == pytest.approx(0.8)
    np.testing.assert_allclose(nf.inverse_shots(shots), [0.25, 0.0625, 0.015625, 0.0])


def test_fit_needs_two_noise_levels(nf):
    with pytest.raises(ValueError, match="two different"):
        nf.fit_floor([None], [0.3])


def test_floors_of_synthetic_curves_are_ordered_by_shots(nf):
    rng = np.random.default_rng(0)
    curves = [synthetic_curve(nf, s, rng=rng) for s in (4, 16, 64, None)]
    floors = [nf.loss_floor(c.losses, 5) for c in curves]
    assert floors == sorted(floors, reverse=True)
    np.testing.assert_allclose(floors, [0.4, 0.325, 0.30625, 0.3], atol=5e-3)


def test_parse_shots_reads_counts_and_exact(nf):
    assert nf.parse_shots("128, 512,exact") == [128, 512, None]


def test_setting_overrides_give_valid_configs(nf):
    base = load_config(CONFIG)
    noisy = load_config(CONFIG, nf.setting_overrides(base, 64))
    assert noisy.quantum.shots == 64
    assert noisy.clients.kind_counts(4)["quantum_enhanced"] == 4
    assert noisy.tracking.run_name == "noise-floor-64"
    exact = load_config(CONFIG, nf.setting_overrides(base, None))
    assert exact.clients.kind_counts(4) == {"classical": 4, "quantum_enhanced": 0, "hybrid": 0}
    assert exact.tracking.run_name == "noise-floor-exact"


def test_the_config_takes_full_batch_steps_and_logs_the_objective(nf):
    """sigma_C = 0 (every client's batch is all its rows), F(w_t) logged every round."""
    config = load_config(CONFIG)
    data = experiment_data(config)
    assert config.federation.train_loss
    assert max(len(rows) for rows in data.client_indices) <= config.train.batch_size
    record = RoundRecord(
        round=1,
        test_accuracy=0.5,
        test_loss=0.7,
        mean_client_loss=0.6,
        participants=4,
        failed=0,
        bytes_down=0,
        bytes_up=0,
        seconds=1.0,
    )
    with pytest.raises(ValueError, match="federation.train_loss"):
        nf._objective(record)
    assert nf._objective(record.model_copy(update={"train_loss": 0.25})) == 0.25


def test_plot_writes_a_png(nf, tmp_path):
    curves = [synthetic_curve(nf, s) for s in (4, 16, None)]
    floors = {m: [nf.loss_floor(getattr(c, m), 5) for c in curves] for m in nf.METRIC_LABELS}
    path = nf.noise_floor_plot(curves, floors, 5, tmp_path / "nf.png", "synthetic")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_report_logs_floors_and_plot_to_mlflow(nf, tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("noise-floor")
    curves = [
        nf.Curve(
            c.shots, c.rounds, c.losses, c.test_losses, client.create_run(experiment).info.run_id
        )
        for c in (synthetic_curve(nf, s) for s in (4, 16, None))
    ]
    floors = nf.report(load_config(CONFIG), uri, curves, 5, tmp_path / "nf.png")
    np.testing.assert_allclose(floors, [0.4, 0.325, 0.3], atol=3e-3)  # + 0.9 * 0.7^t tails
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:4] == ["4", "shots", "0.25000", f"{floors[0]:.4f}"]
    runs = client.search_runs([experiment])
    summary = next(r for r in runs if r.data.tags.get("noise_floor.shots") == "summary")
    assert summary.data.metrics["floor_16"] == pytest.approx(floors[1])
    assert summary.data.metrics["test_floor_exact"] == pytest.approx(floors[2] + 0.05)
    assert summary.data.metrics["fit_slope"] == pytest.approx(0.4, rel=0.05)
    for curve in curves:
        assert [a.path for a in client.list_artifacts(curve.run_id)] == ["nf.png"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_noise_floor_grows_with_inverse_shots(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    plot = tmp_path / "noise-floor.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--config",
            str(CONFIG),
            "--tracking-uri",
            uri,
            "--plot",
            str(plot),
            "--set",
            f"output.runs_dir={tmp_path / 'runs'}",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, *values = proc.stdout.strip().splitlines()[-1].split()
    assert name == "NF"
    f128, f512, f2048, exact = map(float, values)
    # measured: 0.2776, 0.2750, 0.2729, 0.2730; the fit 0.2731 + 0.594 / S puts 2048
    # shots 0.0003 above exact, within one run's spread (about 0.0003)
    assert f128 > f512 > max(f2048, exact)
    assert f128 - exact > 0.002
    assert abs(f2048 - exact) < 0.001
    assert plot.read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("noise-floor")
    runs = client.search_runs([experiment.experiment_id])
    tags = sorted(r.data.tags["noise_floor.shots"] for r in runs)
    assert tags == ["128", "2048", "512", "exact", "summary"]
    summary = next(r for r in runs if r.data.tags["noise_floor.shots"] == "summary")
    assert summary.data.metrics["floor_128"] == pytest.approx(f128, abs=1e-4)
    assert summary.data.metrics["fit_slope"] > 0
