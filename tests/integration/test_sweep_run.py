"""`qfl sweep`: a grid times seeds as tagged MLflow runs in one experiment, run on real Ray."""

from __future__ import annotations

import pytest
from conftest import QUICKSTART
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.sweep import expand_grid, parse_grid, plan_sweep, run_point

# the quickstart shrunk: 2 rounds, one validator
SMALL = ["--set", "federation.rounds=2", "--set", "ledger.validators=1"]


def _sweep(tmp_path, *args: str) -> tuple[list[str], str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = ["sweep", str(QUICKSTART), *SMALL, "--set", f"output.runs_dir={tmp_path / 'runs'}"]
    return [*argv, "--tracking-uri", uri, "--experiment", "sweep-test", *args], uri


def _runs(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("sweep-test")
    return client.search_runs([experiment.experiment_id])


@pytest.mark.usefixtures("ray_local")
def test_a_failing_point_is_reported_and_the_other_runs_finish(tmp_path, capsys):
    """2 points x 2 seeds on the 2-CPU Ray, two at a time; the mnist point finds no files."""
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    argv, uri = _sweep(
        tmp_path,
        *("--set", f"data.root={empty}", "--set", "ray.runners=1", "--set", "ledger.enabled=false"),
        *("--grid", "data.dataset=digits,mnist", "--seeds", "2"),
    )
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "4 runs (2 points x 2 seeds)" in out and "2 at a time" in out
    assert err.count("run failed data.dataset=mnist seed") == 2
    assert "DataError: mnist: required file" in err
    runs = _runs(uri)
    # the failures happened while loading data, before their MLflow runs opened
    assert sorted((r.data.tags["seed"], r.info.status) for r in runs) == [
        ("0", "FINISHED"),
        ("1", "FINISHED"),
    ]
    (sweep_id,) = {r.data.tags["sweep.id"] for r in runs}
    assert f"qfl sweep {sweep_id}" in out
    for run in runs:
        assert run.data.tags["sweep.point"] == "data.dataset=digits"
        assert run.data.tags["sweep.data.dataset"] == "digits"
        assert run.data.params["data.dataset"] == "digits"
        assert run.data.params["seed"] == run.data.tags["seed"]
        assert run.data.params["federation.rounds"] == "2"
        assert run.info.run_id in out
        assert (tmp_path / "runs" / run.info.run_id / "checkpoint.npz").is_file()
        accuracy = MlflowClient(uri).get_metric_history(run.info.run_id, "test_accuracy")
        assert sorted(m.step for m in accuracy) == [1, 2]
        final = max(accuracy, key=lambda m: m.step).value
        assert f"{final:.4f}" in out  # the final accuracy in the table
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert sum("FAILED" in row for row in rows) == 2
    assert sum("FINISHED" in row for row in rows) == 2


@pytest.mark.slow  # ~60 s on 2 cores: two runs, each holding both CPUs in turn
@pytest.mark.usefixtures("ray_local")
def test_runs_that_cannot_fit_together_wait_for_their_runners_instead_of_deadlocking(tmp_path):
    """--parallel 2 with runs of 2 runners on 2 CPUs: without placement groups each run
    could hold one runner and wait for its second one until the round timeout."""
    argv, uri = _sweep(
        tmp_path,
        *("--set", "ray.round_timeout_s=60", "--parallel", "2"),
        *("--grid", "train.lr=0.05,0.2"),
    )
    assert main(argv) == 0
    runs = _runs(uri)
    assert sorted(r.data.tags["sweep.point"] for r in runs) == ["train.lr=0.05", "train.lr=0.2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["train.lr"] for r in runs} == {"0.05", "0.2"}


@pytest.mark.usefixtures("ray_local")
def test_a_run_bigger_than_the_cluster_is_a_usage_error(tmp_path, capsys):
    argv, _ = _sweep(tmp_path, "--grid", "ray.runners=1,3")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "grid point 'ray.runners=3'" in err and "3 runners need 3 CPUs" in err
    assert not (tmp_path / "mlflow.db").exists()  # checked before any run started


def test_an_invalid_point_stops_the_sweep_before_any_work(tmp_path, capsys):
    argv, _ = _sweep(tmp_path, "--grid", "federation.rounds=2,0", "--seeds", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "grid point 'federation.rounds=0'" in err and "federation.rounds:" in err
    assert "grid point 'federation.rounds=2'" not in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--grid", "train.lr"], "expected key=v1,v2"), (["--seeds", "0"], "positive integer")],
)
def test_bad_sweep_flags_are_usage_errors(tmp_path, capsys, args, message):
    argv, _ = _sweep(tmp_path, *args)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects its own types
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_run_failing_after_its_mlflow_run_opened_is_tagged_and_marked_failed(tmp_path):
    """run_point (what each Ray task calls), here in-process: the run folder cannot be made
    (output.runs_dir is a file), after the MLflow run opened and before rounds start."""
    blocker = tmp_path / "runs-is-a-file"
    blocker.write_text("not a folder")
    points = expand_grid(parse_grid(["train.lr=0.2"]))
    (run,) = plan_sweep(
        QUICKSTART, [f"output.runs_dir={blocker}"], points, 1, experiment="e", sweep_id="s1"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_point(run, uri, "quickstart.yaml", "s1")
    assert result.status == "FAILED" and result.final_accuracy is None
    assert result.error.startswith(("NotADirectoryError", "FileExistsError"))
    assert result.run_id is not None
    mlflow_run = MlflowClient(uri).get_run(result.run_id)
    assert mlflow_run.info.status == "FAILED"
    assert mlflow_run.info.run_name == "train.lr=0.2 seed=0 [s1]"
    tags = mlflow_run.data.tags
    assert (tags["sweep.id"], tags["sweep.point"], tags["sweep.train.lr"]) == (
        "s1",
        run.point.name,
        "0.2",
    )
