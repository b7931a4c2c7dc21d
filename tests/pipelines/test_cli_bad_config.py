"""`qfl` with a bad config: exit code 2, a message naming file and field, and no side effects.

A bad config must be rejected before Ray starts, an MLflow run opens or a run
folder is created, so every test checks that the working directory stays clean.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines.cli import EXIT_CONFIG, main
from pipelines.config import load_config

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
SIDE_EFFECTS = ("mlflow.db", "mlruns", "runs")


@pytest.fixture(autouse=True)
def plain_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make rich's output deterministic: 80 columns, no forced colour."""
    monkeypatch.setenv("COLUMNS", "80")
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)


def assert_no_side_effects(folder: Path) -> None:
    for name in SIDE_EFFECTS:
        assert not (folder / name).exists(), f"{name} was created for a bad config"


BAD_CASES = [
    # (id, yaml text or None for no file, --set overrides, needles in stderr)
    ("unknown_key", "federation:\n  clientz: 4\n", [], ["federation.clientz", "unknown key"]),
    ("unknown_top_key", "bogus: 1\n", [], ["bogus", "unknown key"]),
    ("wrong_type", "federation:\n  rounds: ten\n", [], ["federation.rounds", "ten"]),
    ("out_of_range", "train:\n  lr: -1\n", [], ["train.lr", "greater than 0"]),
    ("fraction_range", "federation:\n  sample_fraction: 1.5\n", [], ["federation.sample_fraction"]),
    ("cross_field", "federation:\n  strategy: fedprox\n", [], ["federation", "prox_mu"]),
    ("missing_file", None, [], ["config file not found"]),
    ("malformed_yaml", "a: [1, 2\n", [], ["malformed YAML"]),
    ("not_a_mapping", "- 1\n- 2\n", [], ["top level must be a mapping"]),
    ("bad_set_value", "name: x\n", ["federation.rounds=ten"], ["federation.rounds", "ten"]),
    ("set_unknown_key", "name: x\n", ["federation.clientz=1"], ["federation.clientz"]),
    ("data_root_missing", "name: x\n", ["data.root=nowhere"], ["data.root", "nowhere"]),
]


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize(
    ("text", "overrides", "needles"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_bad_config_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    text: str | None,
    overrides: list[str],
    needles: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    if text is not None:
        Path("bad.yaml").write_text(text, encoding="utf-8")
    argv = [command, "bad.yaml"] + [arg for o in overrides for arg in ("--set", o)]
    assert main(argv) == EXIT_CONFIG == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "config error" in err
    assert "bad.yaml" in err
    for needle in needles:
        assert needle in err
    assert_no_side_effects(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if text is None else ["bad.yaml"])


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_bad_master_secret_in_the_environment_exits_2_without_echoing_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(QUICKSTART, "good.yaml")
    monkeypatch.setenv("QFL_MASTER_SECRET", "c0ffee" * 5)  # 15 bytes: too short
    grid = ["--grid", "train.lr=0.1,0.2"] if command == "sweep" else []
    assert main([command, "good.yaml", *grid]) == EXIT_CONFIG
    out, err = capsys.readouterr()
    assert "config error" in err and "QFL_MASTER_SECRET has 15 bytes" in err
    assert "c0ffee" not in out + err
    assert_no_side_effects(tmp_path)


BAD_SET = [
    ("no_equals", "federation.rounds", "federation.rounds"),
    ("empty_segment", "federation..rounds=3", "federation..rounds"),
    ("into_scalar", "seed.x=1", "seed is not a section"),
]
GOOD_YAML = "name: x\nseed: 0\n"


@pytest.mark.parametrize(
    ("override", "needle"), [c[1:] for c in BAD_SET], ids=[c[0] for c in BAD_SET]
)
def test_bad_set_syntax_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    override: str,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("good.yaml").write_text(GOOD_YAML, encoding="utf-8")
    assert main(["run", "good.yaml", "--set", override]) == 2
    err = capsys.readouterr().err
    assert "--set" in err
    assert needle in err
    assert_no_side_effects(tmp_path)


def test_bad_set_syntax_names_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("good.yaml").write_text(GOOD_YAML, encoding="utf-8")
    assert main(["run", "good.yaml", "--set", "federation.rounds"]) == 2
    assert "good.yaml" in capsys.readouterr().err


def test_set_into_scalar_absent_from_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`seed` not in the file: the override makes a mapping, which validation rejects."""
    monkeypatch.chdir(tmp_path)
    Path("good.yaml").write_text("name: x\n", encoding="utf-8")
    assert main(["run", "good.yaml", "--set", "seed.x=1"]) == 2
    err = capsys.readouterr().err
    assert "good.yaml" in err
    assert "seed: Input should be a valid integer" in err
    assert_no_side_effects(tmp_path)


def test_console_script_bad_config(tmp_path: Path) -> None:
    qfl = shutil.which("qfl")
    assert qfl is not None, "the qfl console script is not installed (pip install -e .)"
    (tmp_path / "bad.yaml").write_text("federation:\n  clientz: 4\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR")}
    proc = subprocess.run(
        [qfl, "run", "bad.yaml"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "config error" in proc.stderr
    assert "bad.yaml" in proc.stderr
    assert "federation.clientz" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert_no_side_effects(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_validate_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART), "--set", "federation.rounds=3"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "  rounds: 3" in out.splitlines()
    resolved = yaml.safe_load(out)
    assert resolved["federation"]["rounds"] == 3
    assert resolved["name"] == "quickstart"
    assert load_config(QUICKSTART, ["federation.rounds=3"]).model_dump(mode="json") == resolved


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate", "x.yaml"])
    assert info.value.code == 2


# --------------------------------------------------------------------------- known bugs


def test_error_text_with_markup_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bad.yaml").write_text('name: "[/] unterminated\n', encoding="utf-8")
    assert main(["run", "bad.yaml"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err
    assert "[/]" in err


def test_long_path_is_printed_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / ("d" * 90)
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    path = folder / "bad.yaml"
    path.write_text("federation:\n  clientz: 4\n", encoding="utf-8")
    assert main(["run", str(path)]) == 2
    assert str(path) in capsys.readouterr().err


def test_validate_output_reloads_with_long_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "n" * 120
    assert main(["validate", str(QUICKSTART), "--set", f"name={name}"]) == 0
    out = capsys.readouterr().out
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(out, encoding="utf-8")
    assert load_config(resolved) == load_config(QUICKSTART, [f"name={name}"])
