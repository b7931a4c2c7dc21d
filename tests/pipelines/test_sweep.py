"""Sweep planning without Ray: grid parsing, expansion order, point names, seeds, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import QUICKSTART

from pipelines.sweep import (
    GridAxis,
    SweepPoint,
    SweepResult,
    absolute_tracking_uri,
    canonical,
    default_parallel,
    expand_grid,
    failed,
    parse_grid,
    plan_sweep,
    portable,
    split_values,
    tag_key,
)
from qfl.errors import ConfigError


def test_parse_grid_types_values_as_yaml_and_keeps_flag_order():
    axes = parse_grid(["train.lr=0.10,1.0e-2", "federation.strategy=fedavg,fedprox", "a.b=true,1"])
    assert axes == (
        GridAxis(key="train.lr", values=("0.1", "0.01")),
        GridAxis(key="federation.strategy", values=("fedavg", "fedprox")),
        GridAxis(key="a.b", values=("true", "1")),
    )


@pytest.mark.parametrize(
    ("raw", "parts"),
    [
        ("1,2,3", ["1", "2", "3"]),
        ("[64],[32,32]", ["[64]", "[32,32]"]),
        ("{a: 1, b: 2},null", ["{a: 1, b: 2}", "null"]),
        (" x , y ", ["x", "y"]),
        ("single", ["single"]),
    ],
)
def test_split_values_splits_at_commas_outside_brackets(raw, parts):
    assert split_values(raw) == parts


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.1, "0.1"), (128, "128"), (True, "true"), (None, "null"), ("digits", "digits"),
     ("128", "'128'"), ([64, 32], "[64, 32]"), ({"a": 1}, "{a: 1}")],
)  # fmt: skip
def test_canonical_value_is_one_line_of_yaml_that_reads_back_the_same(value, text):
    assert canonical(value) == text


def test_flow_list_values_become_points():
    (axis,) = parse_grid(["model.hidden=[64],[32,32]"])
    assert axis.values == ("[64]", "[32, 32]")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["train.lr"], "expected key=v1,v2"),
        (["train.lr="], "empty value"),
        (["train.lr=0.1,,0.2"], "empty value"),
        (["train.lr=0.1,0.10"], "repeated"),
        (["train.lr=0.1", "train.lr=0.2"], "already a grid key"),
        (["tracking.experiment=a,b"], "one MLflow experiment"),
        (["train..lr=1"], "expected section.key=value"),
        (["train.lr=[1,2"], "not valid YAML"),
    ],
)
def test_malformed_grid_flags_are_usage_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid(flags)


def test_expansion_is_the_cartesian_product_last_axis_fastest():
    points = expand_grid(parse_grid(["train.lr=0.01,0.1", "quantum.shots=128,512,1024"]))
    assert [p.name for p in points] == [
        "train.lr=0.01,quantum.shots=128",
        "train.lr=0.01,quantum.shots=512",
        "train.lr=0.01,quantum.shots=1024",
        "train.lr=0.1,quantum.shots=128",
        "train.lr=0.1,quantum.shots=512",
        "train.lr=0.1,quantum.shots=1024",
    ]
    assert points[4].overrides() == ["train.lr=0.1", "quantum.shots=512"]


def test_no_grid_is_one_point_without_keys():
    (point,) = expand_grid(parse_grid([]))
    assert point.name == "" and point.overrides() == []


def test_point_tags_name_each_key_without_brackets():
    point = SweepPoint(values=(("resources[0].availability.p", "0.5"), ("train.lr", "0.1")))
    assert point.tags() == {
        "sweep.point": "resources[0].availability.p=0.5,train.lr=0.1",
        "sweep.resources.0.availability.p": "0.5",
        "sweep.train.lr": "0.1",
    }
    assert tag_key("a[10].b[2]") == "a.10.b.2"


def test_plan_runs_every_point_times_seeds_with_seeds_from_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    points = expand_grid(parse_grid(["train.lr=0.05,0.2"]))
    runs = plan_sweep(QUICKSTART, ["seed=7", "federation.rounds=2"], points, 3, sweep_id="abc")
    assert [(r.index, r.point.name, r.seed) for r in runs] == [
        (0, "train.lr=0.05", 7),
        (1, "train.lr=0.05", 8),
        (2, "train.lr=0.05", 9),
        (3, "train.lr=0.2", 7),
        (4, "train.lr=0.2", 8),
        (5, "train.lr=0.2", 9),
    ]
    run = runs[4]
    assert run.config.seed == 8 and run.config.train.lr == 0.2
    assert run.config.federation.rounds == 2  # --set applies to every point
    assert run.config.tracking.experiment == "quickstart"
    assert run.config.tracking.run_name == "train.lr=0.2 seed=8 [abc]"
    assert run.config.output.runs_dir == tmp_path / "runs"  # absolute, for Ray workers
    assert run.tags("abc") == {
        "sweep.id": "abc",
        "sweep.point": "train.lr=0.2",
        "sweep.train.lr": "0.2",
        "seed": "8",
    }


def test_grid_wins_over_set_and_experiment_flag_wins_over_the_config():
    points = expand_grid(parse_grid(["federation.rounds=3"]))
    (run,) = plan_sweep(QUICKSTART, ["federation.rounds=2"], points, 1, experiment="mine")
    assert run.config.federation.rounds == 3
    assert run.config.tracking.experiment == "mine"


def test_a_gridded_seed_is_the_base_of_that_points_seeds():
    points = expand_grid(parse_grid(["seed=10,20"]))
    runs = plan_sweep(QUICKSTART, [], points, 2)
    assert [(r.point.name, r.seed) for r in runs] == [
        ("seed=10", 10),
        ("seed=10", 11),
        ("seed=20", 20),
        ("seed=20", 21),
    ]


def test_every_invalid_point_is_named_with_its_field_before_anything_runs():
    points = expand_grid(parse_grid(["federation.rounds=2,0", "train.lr=0.1,-1"]))
    with pytest.raises(ConfigError) as info:
        plan_sweep(QUICKSTART, [], points, 1)
    message = str(info.value)
    assert "grid point 'federation.rounds=2,train.lr=-1'" in message
    assert "grid point 'federation.rounds=0,train.lr=0.1'" in message
    assert "grid point 'federation.rounds=0,train.lr=-1'" in message
    assert "grid point 'federation.rounds=2,train.lr=0.1'" not in message
    assert "federation.rounds:" in message and "train.lr:" in message


def test_a_value_of_the_wrong_type_or_an_unknown_key_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"(?s)grid point 'federation.rounds=many'.*federation\.rounds"
    ):
        plan_sweep(QUICKSTART, [], expand_grid(parse_grid(["federation.rounds=many"])), 1)
    with pytest.raises(
        ConfigError, match=r"(?s)grid point 'train.speed=1'.*train\.speed: unknown key"
    ):
        plan_sweep(QUICKSTART, [], expand_grid(parse_grid(["train.speed=1"])), 1)


def test_a_seed_past_the_range_is_a_config_error_naming_the_point():
    points = expand_grid(parse_grid([f"seed={2**32 - 2}"]))
    assert len(plan_sweep(QUICKSTART, [], points, 2)) == 2
    with pytest.raises(ConfigError, match=r"(?s)grid point 'seed=4294967294'.*seed:"):
        plan_sweep(QUICKSTART, [], points, 3)


def test_seeds_below_one_is_a_usage_error():
    with pytest.raises(ConfigError, match="--seeds 0"):
        plan_sweep(QUICKSTART, [], expand_grid(()), 0)


def test_portable_config_has_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    config = plan_sweep(
        QUICKSTART,
        ["data.dataset=mnist", "data.root=data", "output.runs_dir=out"],
        expand_grid(()),
        1,
    )[0].config
    assert config.data.root == tmp_path / "data"
    assert config.output.runs_dir == tmp_path / "out"
    again = portable(config, "e", "n")
    assert again.data.root == tmp_path / "data" and again.tracking.run_name == "n"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db"),
        ("sqlite:////abs/m.db", "sqlite:////abs/m.db"),
        ("mlruns", "{cwd}/mlruns"),
        ("file:./mlruns", "file://{cwd}/mlruns"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("databricks", "databricks"),
    ],
)
def test_local_tracking_uris_become_absolute(uri, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert absolute_tracking_uri(uri) == expected.format(cwd=Path.cwd())


@pytest.mark.parametrize(
    ("cpus", "runners", "runner_cpus", "parallel"),
    [(2, 1, 1.0, 2), (2, 2, 1.0, 1), (16, 2, 1.0, 8), (1, 2, 1.0, 1), (4, 2, 0.5, 4)],
)
def test_default_parallel_fits_runs_side_by_side(cpus, runners, runner_cpus, parallel):
    runs = plan_sweep(
        QUICKSTART,
        [f"ray.runners={runners}", f"ray.runner_num_cpus={runner_cpus}"],
        expand_grid(()),
        2,
    )
    assert default_parallel(cpus, runs) == parallel


def test_failed_picks_failed_results():
    ok = SweepResult(index=0, point="a=1", seed=0, status="FINISHED", final_accuracy=0.9)
    bad = SweepResult(index=1, point="a=2", seed=0, status="FAILED", error="DataError: x")
    assert failed([ok, bad]) == [bad]


def test_results_table_has_a_row_per_run_with_its_outcome():
    from rich.console import Console

    from pipelines.sweep_cli import results_table

    ok = SweepResult(
        index=0, point="train.lr=0.1", seed=3, status="FINISHED", run_id="r" * 32,
        final_accuracy=0.91234, wall_seconds=12.34,
    )  # fmt: skip
    bad = SweepResult(index=1, point="train.lr=9", seed=3, status="FAILED", error="boom")
    console = Console(width=160, record=True)
    console.print(results_table("sid", [ok, bad]))
    rows = [line for line in console.export_text().splitlines() if line.startswith("│")]
    assert [[cell.strip() for cell in row.split("│")[1:6]] for row in rows] == [
        ["train.lr=0.1", "3", "FINISHED", "0.9123", "12.3 s"],
        ["train.lr=9", "3", "FAILED", "-", "0.0 s"],
    ]
    assert "r" * 32 in rows[0] and rows[1].rstrip("│ ").endswith("-")
