"""`qfl report`: runs read back from a real MLflow sqlite store, numbers checked by hand."""

from __future__ import annotations

import base64
import math
import re

import pytest
from conftest import REPO
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pipelines.cli import main
from pipelines.config import load_config
from pipelines.report import (
    REPORT_TAG,
    Curve,
    ExperimentData,
    RunData,
    Series,
    Stat,
    build_report,
    client_kind,
    expand_params,
    group_runs,
    log_report,
    read_experiment,
    rounds_to_target,
    write_report,
)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> MlflowClient:
    """One sqlite tracking store for the module (creating one takes seconds)."""
    return MlflowClient(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")


@pytest.fixture
def store(tracking, tmp_path):
    """The store and a folder of this test's own; its experiment is named after the folder."""
    return tracking, tmp_path


def _experiment(client, tmp_path) -> str:
    """This test's experiment (named `tmp_path.name`), artifacts under tmp_path."""
    return client.create_experiment(
        tmp_path.name, artifact_location=(tmp_path / "artifacts").as_uri()
    )


def _log_run(
    client,
    experiment_id: str,
    params: dict[str, str],
    metrics: dict[str, list[float]],
    *,
    tags: dict[str, str] | None = None,
    status: str = "FINISHED",
    run_name: str | None = None,
) -> str:
    """A run with `params` and each metric's values at steps 1, 2, ..."""
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
    batch = [
        Metric(key, value, 1000 + step, step)
        for key, values in metrics.items()
        for step, value in enumerate(values, start=1)
    ]
    client.log_batch(
        run_id,
        metrics=batch,
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in (tags or {}).items()],
    )
    client.set_terminated(run_id, status=status)
    return run_id


def _classic(seed: int, **extra: str) -> dict[str, str]:
    return {
        "name": "classic",
        "seed": str(seed),
        "model.kind": "mlp",
        "tracking.run_name": f"classic-{seed}",
        "output.runs_dir": f"/tmp/runs{seed}",
        "aggregation.rule": "fedavg",
        "attack.kind": "none",
        "attack.fraction": "0.0",
    } | extra


CLASSIC = {
    0: {
        "test_accuracy": [0.5, 0.7, 0.9],
        "round_seconds": [1.0, 2.0, 3.0],
        "bytes_down": [100, 100, 100],
        "bytes_up": [50, 50, 50],
        "failed_clients": [0, 1, 0],
    },
    1: {
        "test_accuracy": [0.6, 0.8, 0.85],
        "round_seconds": [2.0, 2.0, 2.0],
        "bytes_down": [100, 100, 100],
        "bytes_up": [50, 50, 50],
        "failed_clients": [0, 0, 0],
    },
}


def _two_seeds(client, experiment_id) -> None:
    for seed, metrics in CLASSIC.items():
        _log_run(client, experiment_id, _classic(seed), metrics, run_name=f"classic-{seed}")


def test_final_accuracy_over_seeds_rounds_to_target_and_sums(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    _two_seeds(client, exp)
    report = build_report(read_experiment(client, tmp.name), target=0.8)
    assert report.configurations == ("classic",)  # seeds, run names and output paths aside
    (row,) = report.comparison
    assert row.seeds == 2 and row.rounds == 3 and row.kind == "classical"
    assert row.final_accuracy.mean == pytest.approx(0.875)
    assert row.final_accuracy.std == pytest.approx(math.sqrt(2 * 0.025**2))  # sample std
    assert row.rounds_to_target == 3  # mean curve 0.55, 0.75, 0.875
    assert row.wall_s == pytest.approx(6.0)  # (1+2+3 + 2+2+2) / 2
    assert row.bytes == pytest.approx(450.0)
    assert row.failed_clients == pytest.approx(0.5)
    assert (row.quantum_jobs, row.fallbacks, row.mitigation_shots) == (0.0, 0.0, 0.0)
    (curve,) = report.convergence
    assert curve.steps == (1, 2, 3)
    assert [p.mean for p in curve.points] == pytest.approx([0.55, 0.75, 0.875])
    assert [(p.low, p.high) for p in curve.points] == [(0.5, 0.6), (0.7, 0.8), (0.85, 0.9)]
    lower = build_report(read_experiment(client, tmp.name), target=0.7)
    assert lower.comparison[0].rounds_to_target == 2


@pytest.mark.parametrize(
    ("means", "target", "expected"),
    [([0.2, 0.5, 0.8], 0.8, 3), ([0.2, 0.9, 0.7], 0.8, 2), ([0.1, 0.2], 0.8, None)],
)
def test_rounds_to_target_is_the_first_round_reaching_it(means, target, expected):
    points = tuple(Stat(mean=m, std=0.0, low=m, high=m, n=1) for m in means)
    curve = Curve(label="c", steps=tuple(range(1, len(means) + 1)), points=points)
    assert rounds_to_target(curve, target) == expected


def test_quantum_counters_outages_and_kind(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    params = {"name": "hyb", "seed": "0", "model.kind": "hybrid", "clients.fractions.hybrid": "1.0"}
    metrics = {
        "test_accuracy": [0.3, 0.5],
        "quantum.circuits": [10, 12],
        "updates.fallback": [1, 0],
        "mitigation.extra_shots": [100, 200],
        "resource.qpu_a.available": [1, 0],
        "resource.qpu_b.available": [1, 1],
    }
    _log_run(client, exp, params, metrics)
    (row,) = build_report(read_experiment(client, tmp.name)).comparison
    assert row.kind == "hybrid"
    assert (row.quantum_jobs, row.fallbacks, row.mitigation_shots) == (22.0, 1.0, 300.0)
    assert row.outage_rounds == 1.0
    assert row.rounds_to_target is None


def test_varying_params_split_configurations_and_sweep_points_group(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    for seed in (0, 1):
        for rule in ("fedavg", "median"):
            _log_run(client, exp, _classic(seed, **{"aggregation.rule": rule}), CLASSIC[seed])
        # a sweep point: grouped by its tag whatever else differs between its runs
        tags = {"sweep.point": "train.lr=0.1"}
        _log_run(client, exp, _classic(seed, **{"train.lr": str(0.1 + seed)}), CLASSIC[seed],
                 tags=tags)  # fmt: skip
    configs = group_runs(read_experiment(client, tmp.name).runs)
    labels = {c.label: c.seeds for c in configs}
    assert labels == {
        "classic [aggregation.rule=fedavg]": 2,
        "classic [aggregation.rule=median]": 2,
        "classic [train.lr=0.1]": 2,
    }


def test_noise_robustness_by_param_with_and_without_mitigation(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    accuracy = {("0.01", "[]"): 0.8, ("0.05", "[]"): 0.6, ("0.05", "['zne']"): 0.7}
    for (p2, techniques), final in accuracy.items():
        for seed, shift in ((0, 0.0), (1, 0.02)):
            params = {
                "name": "vqc",
                "seed": str(seed),
                "model.kind": "vqc",
                "quantum.noise.p2": p2,
                "quantum.mitigation.techniques": techniques,
                "quantum.shots": "null",
            }
            _log_run(client, exp, params, {"test_accuracy": [0.1, final + shift]})
    report = build_report(read_experiment(client, tmp.name))
    (plot,) = report.noise  # quantum.shots is null everywhere: not a numeric param
    assert plot.param == "quantum.noise.p2"
    series = {
        s.label: [(p.x, p.accuracy.mean, p.accuracy.n) for p in s.points] for s in plot.series
    }
    assert series["without mitigation"] == [
        (0.01, pytest.approx(0.81), 2),
        (0.05, pytest.approx(0.61), 2),
    ]
    assert series["with mitigation"] == [(0.05, pytest.approx(0.71), 2)]
    assert len(report.configurations) == 3
    assert report.attack is None


def test_resource_noise_params_are_expanded_from_a_real_config():
    config = load_config(REPO / "configs" / "outage.yaml")
    params = expand_params(config.flat())
    assert "resources" not in params
    assert params["resources[0].noise.p2"] == "0.01"
    assert params["resources[0].name"] == "qpu_a"
    assert client_kind(config.flat()) == "hybrid"
    assert client_kind(load_config(REPO / "configs" / "quickstart.yaml").flat()) == "classical"


def test_attack_fraction_per_aggregation_rule(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    finals = {("fedavg", 0.0): 0.9, ("fedavg", 0.25): 0.3, ("median", 0.0): 0.88}
    finals |= {("median", 0.25): 0.85}
    for (rule, fraction), final in finals.items():
        extra = {"aggregation.rule": rule, "attack.fraction": str(fraction)}
        extra["attack.kind"] = "sign_flip" if fraction else "none"
        _log_run(client, exp, _classic(0, **extra), {"test_accuracy": [0.1, final]})
    plot = build_report(read_experiment(client, tmp.name)).attack
    assert plot is not None and plot.param == "attack.fraction"
    got = {(s.label, p.x): p.accuracy.mean for s in plot.series for p in s.points}
    assert got == pytest.approx(finals)


def test_efficiency_uses_the_metrics_that_exist(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    metrics = {
        "test_accuracy": [0.5, 0.6],
        "round_seconds": [2.0, 4.0],
        "sign_seconds": [0.1, 0.3],
        "time.train_s": [1.0, 2.0],
        "net.sim_round_s": [0.5, 0.5],
        "energy.kwh": [0.001, 0.002],
        "energy.classical_kwh": [0.001, 0.001],
        "energy.total_kwh": [0.001, 0.003],  # a running total: redundant, left out
        "ledger.bytes": [1000, 2500],
    }
    _log_run(client, exp, {"name": "e", "seed": "0", "model.kind": "mlp"}, metrics)
    report = build_report(read_experiment(client, tmp.name))
    assert report.efficiency_keys == (
        "time.train_s",
        "round_seconds",
        "net.sim_round_s",
        "sign_seconds",
        "ledger.bytes",
        "energy.kwh",
        "energy.classical_kwh",
    )
    (row,) = report.efficiency
    assert row.per_round["time.train_s"] == pytest.approx(1.5)
    assert row.per_round["sign_seconds"] == pytest.approx(0.2)
    assert row.per_round["net.sim_round_s"] == pytest.approx(0.5)
    assert row.energy == {
        "energy.kwh": pytest.approx(0.003),
        "energy.classical_kwh": pytest.approx(0.002),
    }
    assert row.ledger_bytes_last == 2500.0
    assert len(report.ledger_curves) == 1


def test_unfinished_runs_and_runs_without_accuracy_are_left_out(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    _two_seeds(client, exp)
    _log_run(client, exp, _classic(2), {"test_accuracy": [0.0]}, status="FAILED", run_name="bad")
    _log_run(client, exp, {"name": "parent"}, {}, run_name="sweep-parent")
    report = build_report(read_experiment(client, tmp.name))
    assert report.runs_total == 4
    assert report.comparison[0].seeds == 2
    assert set(report.left_out) == {"bad (failed)", "sweep-parent (finished, no test_accuracy)"}


def _figures_in(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', html)]


def test_html_and_markdown_hold_every_figure_and_table(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    _two_seeds(client, exp)
    for fraction, kind in (("0.25", "sign_flip"), ("0.0", "none")):
        extra = {"aggregation.rule": "median", "attack.fraction": fraction, "attack.kind": kind}
        _log_run(client, exp, _classic(0, **extra), {"test_accuracy": [0.4, 0.7]})
    report = build_report(read_experiment(client, tmp.name))
    files = write_report(report, tmp / "out")
    names = sorted(p.name for p in files.figures)
    assert names == [
        "attack_fraction.png",
        "convergence.png",
        "final_accuracy.png",
        "round_time.png",
    ]
    html = files.html.read_text()
    assert sorted(_figures_in(html)) == sorted(p.read_bytes() for p in files.figures)
    assert all(png.startswith(b"\x89PNG") for png in _figures_in(html))
    # self-contained: nothing is fetched (no http, no file reference, no script)
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []
    assert "<script" not in html and "http://" not in html and "https://" not in html
    markdown = files.markdown.read_text()
    for path in files.figures:
        assert f"](figures/{path.name})" in markdown
    for title in ("Convergence", "Classical vs quantum vs hybrid", "Robustness"):
        assert f"<h2>{title}</h2>" in html and f"## {title}" in markdown
    final = "0.8750 ± 0.0354"
    assert final in html and final in markdown
    assert "no data: no noise or shots param" in html
    assert "_no data: no noise or shots param" in markdown


def test_an_empty_experiment_gives_no_data_everywhere(store):
    client, tmp = store
    _experiment(client, tmp)
    report = build_report(read_experiment(client, tmp.name))
    files = write_report(report, tmp / "out")
    assert files.figures == ()
    html = files.html.read_text()
    assert html.count('class="nodata"') == 5
    assert files.markdown.read_text().count("_no data:") == 5


def test_log_report_stores_artifacts_in_a_tagged_run_the_next_read_skips(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    _two_seeds(client, exp)
    data = read_experiment(client, tmp.name)
    files = write_report(build_report(data), tmp / "out")
    run_id = log_report(client, exp, files, len(data.runs))
    run = client.get_run(run_id)
    assert run.info.run_name == "report" and run.info.status == "FINISHED"
    assert run.data.tags[REPORT_TAG] == "1"
    top = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/figures"} <= top
    figures = {a.path for a in client.list_artifacts(run_id, "report/figures")}
    assert figures == {f"report/figures/{p.name}" for p in files.figures}
    assert len(read_experiment(client, tmp.name).runs) == 2  # the report run is not a run


def test_report_models_are_pure_data():
    run = RunData(
        run_id="r1",
        params={"name": "x", "model.kind": "mlp"},
        metrics={"test_accuracy": Series(steps=(1, 2), values=(0.25, 0.5))},
    )
    data = ExperimentData(name="e", experiment_id="0", tracking_uri="mem", runs=(run,))
    report = build_report(data, target=0.5)
    assert report.comparison[0].rounds_to_target == 2
    assert report.comparison[0].final_accuracy.mean == 0.5


def test_configurations_with_numbers_sort_by_value_not_by_text():
    def run(i: int, point: str) -> RunData:
        series = {"test_accuracy": Series(steps=(1,), values=(0.5,))}
        return RunData(
            run_id=f"r{i}", params={"name": "dp"}, tags={"sweep.point": point}, metrics=series
        )

    points = ["eps=32", "eps=2", "eps=1e-3", "eps=8", "eps=0.5", "eps=[]"]
    configs = group_runs([run(i, p) for i, p in enumerate(points)])
    labels = [c.label.split("[", 1)[1] for c in configs]
    assert labels == ["eps=1e-3]", "eps=0.5]", "eps=2]", "eps=8]", "eps=32]", "eps=[]]"]


def test_cli_writes_report_and_names_unknown_experiments(store, capsys, monkeypatch):
    client, tmp = store
    exp = _experiment(client, tmp)
    _two_seeds(client, exp)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = client.tracking_uri
    out = tmp / "cli"
    assert main(["report", tmp.name, "--tracking-uri", uri, "--out", str(out)]) == 0
    assert (out / "report.html").is_file() and (out / "figures" / "convergence.png").is_file()
    assert "report.html" in capsys.readouterr().out
    reports = client.search_runs([exp], filter_string=f"tags.`{REPORT_TAG}` = '1'")
    assert len(reports) == 1
    assert main(["report", "nope", "--tracking-uri", uri, "--out", str(out)]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["report", tmp.name, "--target", "1.5"])
    assert exc.value.code == 2


def test_odd_runs_are_reported_not_fatal(store):
    client, tmp = store
    exp = _experiment(client, tmp)
    _log_run(client, exp, {}, {"test_accuracy": [float("nan"), 0.5]}, run_name="bare")
    params = {"name": "odd", "resources": "[{broken", "quantum.noise.p2": "null"}
    _log_run(client, exp, params, {"test_accuracy": [0.4], "round_seconds": [1.0]})
    report = build_report(read_experiment(client, tmp.name))
    assert set(report.configurations) == {"bare", "odd"}
    assert report.noise == () and report.attack is None
    files = write_report(report, tmp / "out")
    assert "no data: no noise or shots param" in files.html.read_text()
    assert {p.name for p in files.figures} >= {"convergence.png", "final_accuracy.png"}
