"""Issue 9: a driver killed with SIGKILL mid-run resumes from its last committed round."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART, REPO
from mlflow.tracking import MlflowClient

from ledger.verify import verify_ledger
from pipelines.checkpoint import read_rounds

ROUNDS = 6
COMMON = (
    f"federation.rounds={ROUNDS}",
    "federation.clients=8",
    "federation.clients_per_round=4",  # sampled from the ledger's beacon: must replay exactly
)


def _qfl(tmp: Path, *args: str, **kwargs) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipelines.cli", "run", str(QUICKSTART), *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        command,
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its local Ray too
        **kwargs,
    )


def _overrides(tmp: Path, *extra: str) -> list[str]:
    out = []
    for item in (*COMMON, f"output.runs_dir={tmp / 'runs'}", *extra):
        out += ["--set", item]
    return out + ["--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"]


def _kill_after(process: subprocess.Popen, runs: Path, rounds: int, timeout: float = 300) -> str:
    """SIGKILL the run's process group once `rounds` rounds are committed; its run id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for folder in runs.glob("*"):
            if len(read_rounds(folder)) >= rounds:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
                return folder.name
        if process.poll() is not None:
            pytest.fail(f"the run ended before it was killed:\n{process.stdout.read()}")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    pytest.fail("no round committed in time")


def _finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=600)
    assert process.returncode == 0, out
    return out


def _final_hash(uri: str, run_id: str) -> str:
    return MlflowClient(uri).get_run(run_id).data.tags["final_weights_sha256"]


@pytest.mark.parametrize("ledger", [True, False], ids=["ledger", "no-ledger"])
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, ledger):
    extra = () if ledger else ("ledger.enabled=false",)
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference_dir.mkdir()
    killed_dir.mkdir()
    reference = _qfl(reference_dir, *_overrides(reference_dir, *extra))
    killed = _qfl(killed_dir, *_overrides(killed_dir, *extra))
    run_id = _kill_after(killed, killed_dir / "runs", rounds=3)
    _finish(reference)
    committed = len(read_rounds(killed_dir / "runs" / run_id))
    assert 3 <= committed < ROUNDS  # killed mid-run

    resumed = _qfl(killed_dir, *_overrides(killed_dir, *extra), "--resume", run_id)
    _finish(resumed)

    uri = f"sqlite:///{killed_dir / 'mlflow.db'}"
    (reference_id,) = [p.name for p in (reference_dir / "runs").iterdir()]
    assert _final_hash(uri, run_id) == _final_hash(
        f"sqlite:///{reference_dir / 'mlflow.db'}", reference_id
    )
    client = MlflowClient(uri)
    assert [r.info.run_id for r in client.search_runs(["1"])] == [run_id]  # the same run
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "test_accuracy")]
    assert sorted(steps) == list(range(1, ROUNDS + 1))  # none missing, none twice
    rounds = read_rounds(killed_dir / "runs" / run_id)
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    if ledger:
        head = client.get_run(run_id).data.tags["ledger_head"]
        report = verify_ledger(killed_dir / "runs" / run_id / "ledger.db", head=bytes.fromhex(head))
        assert report.rounds_closed == ROUNDS


def test_resume_refuses_a_different_config(tmp_path, ray_local, clean_env, capsys):
    from pipelines.cli import main
    from pipelines.config import load_config
    from pipelines.run import run_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = [*COMMON, "ledger.enabled=false", f"output.runs_dir={tmp_path / 'runs'}"]
    first = run_experiment(
        load_config(QUICKSTART, [*settings, "federation.rounds=1"]), tracking_uri=uri
    )
    overrides = [arg for item in settings for arg in ("--set", item)]
    argv = ["run", str(QUICKSTART), *overrides, "--tracking-uri", uri, "--resume", first.run_id]
    assert main([*argv, "--set", "federation.rounds=2"]) == 1
    assert "config differs" in capsys.readouterr().err


def test_resume_of_an_unknown_run_is_a_clear_error(tmp_path, clean_env, capsys):
    from pipelines.cli import main

    runs = tmp_path / "runs"
    argv = ["run", str(QUICKSTART), "--set", f"output.runs_dir={runs}", "--resume", "no-such"]
    assert main([*argv, "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]) == 1
    assert "no run folder" in capsys.readouterr().err
    assert not (runs / "no-such").exists() and not (REPO / "runs" / "no-such").exists()


def _crash_before_a_checkpoint(monkeypatch, config, uri: str, *, commit: int) -> Path:
    """Run `config` until its `commit`-th round commit has stored the round's block and
    not yet renamed its checkpoint into place, and stop there as a kill would; its run
    folder."""
    import pipelines.run as run_module
    from pipelines.run import run_experiment

    promote, commits = run_module.promote_checkpoint, []

    def crash(run_dir):
        commits.append(run_dir)
        if len(commits) == commit:
            raise KeyboardInterrupt
        return promote(run_dir)

    monkeypatch.setattr(run_module, "promote_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tracking_uri=uri)
    monkeypatch.setattr(run_module, "promote_checkpoint", promote)
    (run_dir,) = config.output.runs_dir.iterdir()
    return run_dir


def test_a_crash_between_a_block_and_its_checkpoint_resumes_from_the_block(
    tmp_path, ray_local, monkeypatch, clean_env
):
    """The window the pending checkpoint covers: round 3's closing block is stored, its
    checkpoint not yet renamed into place. The resumed run takes the pending checkpoint
    (its block is on the ledger), so the ledger is never a round ahead of the state."""
    from pipelines.checkpoint import PENDING, load_checkpoint
    from pipelines.config import load_config
    from pipelines.run import run_experiment

    def config(folder: str):
        return load_config(QUICKSTART, [*COMMON, f"output.runs_dir={tmp_path / folder}"])

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = _crash_before_a_checkpoint(monkeypatch, config("runs"), uri, commit=3)
    assert (run_dir / PENDING).is_file()
    assert verify_ledger(run_dir / "ledger.db").rounds_closed == 3  # the block is stored

    resumed = run_experiment(config("runs"), tracking_uri=uri, resume=run_dir.name)
    reference = run_experiment(config("reference"), tracking_uri=uri)

    assert resumed.weights_hash == reference.weights_hash
    assert load_checkpoint(run_dir).round == ROUNDS
    report = verify_ledger(run_dir / "ledger.db", head=bytes.fromhex(resumed.ledger_head))
    assert report.rounds_closed == ROUNDS
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_dir.name, "test_accuracy")]
    assert sorted(steps) == list(range(1, ROUNDS + 1))  # none missing, none twice
    assert [r["round"] for r in read_rounds(run_dir)] == list(range(1, ROUNDS + 1))


def test_a_resumed_hybrid_run_sees_the_circuit_breaker_the_uninterrupted_one_saw(
    tmp_path, ray_local, monkeypatch, clean_env
):
    """Every job of the resource fails, so the monitor trips it for the round after a
    quantum round (round 1 runs classically for that reason). A crash after round 0's
    block: the resumed run must restore the monitor's job history from the checkpoint
    to trip round 1 too, not send its clients to the resource again."""
    from pipelines.config import load_config
    from pipelines.run import run_experiment

    def config(folder: str):
        return load_config(
            REPO / "configs" / "outage.yaml",
            [
                "data.classes=[0,1,2,3]",
                "federation.clients=4",
                "federation.rounds=2",
                "train.epochs=1",
                "quantum.shots=128",
                "resources[0].availability.outages=[]",
                "resources[0].availability.job_failure_rate=0.999",
                f"output.runs_dir={tmp_path / folder}",
            ],
        )

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = _crash_before_a_checkpoint(monkeypatch, config("runs"), uri, commit=1)
    resumed = run_experiment(config("runs"), tracking_uri=uri, resume=run_dir.name)
    reference = run_experiment(config("reference"), tracking_uri=uri)

    def reasons(folder):
        return [sorted({f["reason"] for f in r["fallbacks"]}) for r in read_rounds(folder)]

    expected = reasons(reference.run_dir)
    assert [any("tripped" in reason for reason in r) for r in expected] == [False, True]
    assert reasons(run_dir) == expected
    assert resumed.weights_hash == reference.weights_hash
