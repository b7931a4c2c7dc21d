"""Same config and seed: same final weights, same ledger beacons and, with deterministic
signatures, byte-identical ledgers."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from conftest import QUICKSTART

from actors.ledger_keeper import LedgerKeeperActor
from federated.messages import ClientUpdate, TrainedBatch
from ledger.crypto import liboqs_library
from ledger.keeper import LedgerConfig, sign_update, update_nonce
from ledger.keys import master_secret_from_run_seed
from ledger.records import RoundOpen
from ledger.store import open_readonly
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


def _schedule(path) -> list[tuple]:
    """Per block: height, proposer, and its RoundOpen's (round, beacon, sampled, plan)."""
    with open_readonly(path) as store:
        return [
            (
                block.height,
                block.header.proposer,
                [
                    (tx.round, tx.beacon, tx.sampled, tx.plan)
                    for tx in block.transactions
                    if isinstance(tx, RoundOpen)
                ],
            )
            for block in store.blocks()
        ]


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
    # the validators' QRNGs are seeded from the run seed: same beacons, samples, leaders
    schedule = _schedule(first.ledger_path)
    assert len(schedule) == 5 and all(opens for _, _, opens in schedule[1:4])
    assert _schedule(second.ledger_path) == schedule
    assert _schedule(other_seed.ledger_path) != schedule


MASTER = master_secret_from_run_seed(3)
P = 6


def _ledger(path, signatures: str) -> tuple[bytes, list]:
    """Two rounds through a keeper actor with validator actors; its head and blocks."""
    keeper = LedgerKeeperActor.remote(
        path,
        run_id="run-deterministic",
        master_secret=MASTER,
        n_clients=6,
        num_params=P,
        config_bytes=b"config",
        config=LedgerConfig(  # aer QRNG, validator actors
            backend="liboqs", signatures=signatures, validator_placement="actors"
        ),
        seed=5,
    )
    plan = ray.get(keeper.open_round.remote(0, 6, 4))
    rng = np.random.default_rng(0)
    for round_ in range(2):
        updates = []
        for client in plan.sampled:
            delta = rng.normal(size=P).astype(np.float32)
            record = sign_update(
                run_id="run-deterministic",
                master_secret=MASTER,
                client_id=client,
                round_=round_,
                nonce=update_nonce(MASTER, round_, client),
                delta=delta,
                num_examples=10,
                path="classical",
                metrics={"loss": 0.25},
                backend="liboqs",
                deterministic=signatures == "deterministic",
            )
            updates.append(
                ClientUpdate(
                    client_id=client,
                    round=round_,
                    num_samples=10,
                    loss=0.25,
                    delta=delta,
                    seconds=0.0,
                    record=record,
                )
            )
        ray.get(keeper.admit.remote(TrainedBatch(updates=tuple(updates))))
        following = (round_ + 1, 6, 4) if round_ == 0 else None
        closed = ray.get(
            keeper.close_round.remote(
                round_, np.zeros(P, np.float32), {"acc": 0.5}, next_round=following
            )
        )
        plan = closed.next
    _, head = ray.get(keeper.head.remote())
    ray.get(keeper.close.remote())
    with open_readonly(path) as store:
        return head, list(store.blocks())


@pytest.mark.usefixtures("ray_local")
@pytest.mark.skipif(liboqs_library() is None, reason="deterministic signing needs liboqs")
def test_deterministic_signatures_give_the_same_ledger_twice(tmp_path):
    head, blocks = _ledger(tmp_path / "a.db", "deterministic")
    again_head, again_blocks = _ledger(tmp_path / "b.db", "deterministic")
    assert again_head == head
    assert again_blocks == blocks  # every record and every certificate signature
    assert all(len(b.certificate) == 4 for b in blocks)
    # (hedged signatures differ from run to run: tests/ledger/test_keeper.py)
