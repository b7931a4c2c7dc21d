"""Every qfl run writes a signed, certified ledger; `qfl ledger verify` finds tampering."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
import torch
from conftest import QUICKSTART
from mlflow.tracking import MlflowClient

from federated.models import build_model
from ledger.keeper import client_public_keys
from ledger.keys import master_secret_from_run_seed, run_master_secret
from ledger.store import open_readonly
from pipelines.cli import main
from pipelines.config import load_config
from pipelines.run import experiment_data, run_experiment

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ledger-run")
    config = load_config(
        QUICKSTART,
        [
            "federation.rounds=3",
            "federation.clients_per_round=6",
            "federation.train_loss=true",
            f"output.runs_dir={tmp}/runs",
        ],
    )
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    return run_experiment(config, tracking_uri=uri, master_secret=SECRET), uri, tmp


SECRET = bytes(range(1, 41))  # as QFL_MASTER_SECRET would give it


def test_run_records_ledger_metrics_tags_and_artifact(finished_run):
    summary, uri, _ = finished_run
    client = MlflowClient(uri)
    run = client.get_run(summary.run_id)
    assert run.data.tags["ledger_head"] == summary.ledger_head
    # genesis, round 0's open, then one block per round: its close (and the next open)
    assert run.data.tags["ledger_height"] == "4"
    assert run.data.tags["ledger.crypto_backend"] in ("liboqs", "cryptography")
    accepted = client.get_metric_history(summary.run_id, "accepted_updates")
    assert sorted(m.value for m in accepted) == [6.0, 6.0, 6.0]
    rejected = client.get_metric_history(summary.run_id, "rejected_updates")
    assert [m.value for m in rejected] == [0.0, 0.0, 0.0]
    assert all(m.value > 0 for m in client.get_metric_history(summary.run_id, "sign_seconds"))
    assert "ledger.db" in {a.path for a in client.list_artifacts(summary.run_id)}


def test_a_given_master_secret_and_the_run_seed_derive_the_registered_keys(finished_run):
    summary, uri, _ = finished_run
    assert MlflowClient(uri).get_run(summary.run_id).data.tags["qfl.master_secret"] == "given"
    with open_readonly(summary.ledger_path) as store:
        (genesis,) = next(iter(store.blocks())).transactions
    backend = genesis.crypto_backend
    registered = dict(genesis.clients)
    assert registered == client_public_keys(run_master_secret(0, SECRET), 8, backend)
    forgeable = client_public_keys(master_secret_from_run_seed(0), 8, backend)
    assert not set(registered.values()) & set(forgeable.values())


def test_train_loss_is_the_final_models_loss_on_every_clients_data(finished_run):
    """federation.train_loss: F(w_t) = sum_k n_k / n F_k(w_t), recomputed per client."""
    summary, uri, _ = finished_run
    history = MlflowClient(uri).get_metric_history(summary.run_id, "train_loss")
    assert [m.step for m in history] == [1, 2, 3]
    config = load_config(summary.ledger_path.parent / "config.yaml")
    data = experiment_data(config)
    model = build_model(config.model, data.input_shape, data.num_classes, seed=config.seed)
    model.load_state_dict(torch.load(summary.ledger_path.parent / "model.pt"))
    model.eval()
    sizes, losses = [], []
    with torch.no_grad():
        for rows in data.client_indices:
            x, y = torch.from_numpy(data.train.x[rows]), torch.from_numpy(data.train.y[rows])
            losses.append(torch.nn.functional.cross_entropy(model(x), y).item())
            sizes.append(len(rows))
    expected = sum(n * f for n, f in zip(sizes, losses, strict=True)) / sum(sizes)
    assert history[-1].value == pytest.approx(expected, rel=1e-5)
    assert history[0].value > history[-1].value  # it trains


def test_cli_verifies_the_ledger_against_its_head(finished_run, capsys):
    summary, _, _ = finished_run
    assert main(["ledger", "verify", str(summary.ledger_path), "--head", summary.ledger_head]) == 0
    out = capsys.readouterr().out
    assert "ledger OK: 5 blocks" in out
    assert summary.ledger_head in out


def _copy(summary, tmp, name):
    target = tmp / name
    shutil.copy(summary.ledger_path, target)
    return target


def _rewrite(path, sql, params=()):
    """Drop the append-only triggers, change the file, put the triggers back."""
    with sqlite3.connect(path) as db:
        triggers = db.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'")
        triggers = triggers.fetchall()
        for name, _ in triggers:
            db.execute(f"DROP TRIGGER {name}")
        db.execute(sql, params)
        for _, trigger_sql in triggers:
            db.execute(trigger_sql)


def test_a_flipped_signature_byte_is_found_and_named(finished_run, capsys):
    summary, _, tmp = finished_run
    path = _copy(summary, tmp, "flipped.db")
    with sqlite3.connect(path) as db:
        body = db.execute("SELECT body FROM transactions WHERE height=2 AND idx=1").fetchone()[0]
    flipped = bytearray(body)
    flipped[-5] ^= 0x01  # inside the update's signature (the last field)
    _rewrite(path, "UPDATE transactions SET body=? WHERE height=2 AND idx=1", (bytes(flipped),))
    assert main(["ledger", "verify", str(path)]) == 1
    assert "block 2" in capsys.readouterr().err


def test_truncation_passes_alone_but_fails_against_the_recorded_head(finished_run, capsys):
    summary, _, tmp = finished_run
    path = _copy(summary, tmp, "truncated.db")
    _rewrite(path, "DELETE FROM transactions WHERE height=4")
    _rewrite(path, "DELETE FROM blocks WHERE height=4")
    assert main(["ledger", "verify", str(path)]) == 0  # a valid, shorter chain
    assert main(["ledger", "verify", str(path), "--head", summary.ledger_head]) == 1
    assert "head" in capsys.readouterr().err


def test_a_file_that_is_not_a_ledger_is_an_error(finished_run, capsys):
    _, _, tmp = finished_run
    junk = tmp / "junk.db"
    junk.write_bytes(b"not a database" * 100)
    assert main(["ledger", "verify", str(junk)]) == 1
    assert "INVALID" in capsys.readouterr().err


def test_show_and_export(finished_run, capsys):
    summary, _, _ = finished_run
    assert main(["ledger", "show", str(summary.ledger_path)]) == 0
    table = capsys.readouterr().out
    assert "genesis" in table and "round_close" in table
    assert main(["ledger", "export", str(summary.ledger_path), "--jsonl"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 + 3 * (1 + 6 + 1)  # genesis; per round open, 6 updates, close
    assert '"kind": "genesis"' in lines[0]
