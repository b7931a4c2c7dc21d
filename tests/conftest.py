"""Shared fixtures: one Ray for the whole session, repository paths, small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs) shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def clean_env(monkeypatch):
    """No tracking URI leaking in from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return os.environ


def forging_tamper():
    """A Byzantine leader's tamper (`Consensus`/`Validator` test hook): its proposals carry
    the first update's signature zeroed, or, in a block without an update, another Merkle
    root. Made in a function so that Ray pickles it by value for validator actors."""
    from ledger.records import Update, make_block

    def forge(block):
        txs = list(block.transactions)
        updates = [i for i, tx in enumerate(txs) if isinstance(tx, Update)]
        if not updates:  # nothing to forge in this block: move its root instead
            wrong = block.header.model_copy(update={"merkle_root": bytes(32)})
            return block.model_construct(header=wrong, transactions=txs, certificate=())
        i = updates[0]
        txs[i] = txs[i].model_copy(update={"signature": bytes(len(txs[i].signature))})
        h = block.header
        return make_block(
            height=h.height,
            prev_hash=h.prev_hash,
            proposer=h.proposer,
            round=h.round,
            transactions=txs,
        )

    return forge
