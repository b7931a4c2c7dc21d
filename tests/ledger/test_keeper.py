"""A run's ledger written through LedgerKeeper verifies, and records what the contract did."""

from __future__ import annotations

import numpy as np
import pytest

from federated.sampling import sample_clients
from ledger.crypto import liboqs_library
from ledger.keeper import LedgerConfig, LedgerKeeper, sign_update, update_nonce
from ledger.keys import master_secret_from_run_seed
from ledger.records import Rejection, RoundClose, RoundOpen, Update
from ledger.store import open_readonly
from ledger.verify import verify_ledger

BACKENDS = ["cryptography"] + (["liboqs"] if liboqs_library() else [])
MASTER = master_secret_from_run_seed(7)
P = 6


def _update(round_, client, delta, *, master=MASTER, backend):
    return sign_update(
        run_id="run-1",
        master_secret=master,
        client_id=client,
        round_=round_,
        nonce=update_nonce(master, round_, client),
        delta=delta,
        num_examples=10 + client,
        path="classical",
        metrics={"loss": 0.5},
        backend=backend,
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_rounds_with_a_forgery_verify_end_to_end(tmp_path, backend):
    config = LedgerConfig(validators=4, backend=backend, qrng="seeded", norm_bound=10.0)
    keeper = LedgerKeeper(
        tmp_path / "ledger.db",
        run_id="run-1",
        master_secret=MASTER,
        n_clients=5,
        num_params=P,
        config_bytes=b"config",
        config=config,
        seed=3,
    )
    rng = np.random.default_rng(0)
    for round_ in range(2):
        plan = keeper.open_round(round_, 5, 3, sample_clients)
        assert len(plan.sampled) == 3
        pairs = []
        for client in plan.sampled:
            delta = rng.normal(size=P).astype(np.float32)
            pairs.append((_update(round_, client, delta, backend=backend), delta))
        forged_delta = np.ones(P, np.float32)
        outsider = master_secret_from_run_seed(8)  # not the run's keys
        forged = _update(round_, plan.sampled[0], forged_delta, master=outsider, backend=backend)
        # the forgery arrives first: it must not burn the honest client's slot or nonce
        accepted, rejections, seconds = keeper.admit([(forged, forged_delta), *pairs])
        assert accepted == list(plan.sampled)
        assert [r.rule for r in rejections] == ["bad_signature"]
        assert seconds >= 0
        keeper.close_round(round_, np.zeros(P, np.float32), {"test_accuracy": 0.5})
    height, head = keeper.head
    keeper.close()
    assert height == 4  # genesis + 2 x (open, close)
    report = verify_ledger(tmp_path / "ledger.db", head=head, backend=backend)
    assert report.height == 4 and report.head_hash == head
    kinds = [
        type(tx) for b in open_readonly(tmp_path / "ledger.db").blocks() for tx in b.transactions
    ]
    assert kinds.count(RoundOpen) == 2 and kinds.count(RoundClose) == 2
    assert kinds.count(Update) == 6 and kinds.count(Rejection) == 2


def test_sampling_comes_from_the_beacon_and_is_reproducible(tmp_path):
    def sampled(name, seed):
        keeper = LedgerKeeper(
            tmp_path / name,
            run_id="run-1",
            master_secret=MASTER,
            n_clients=20,
            num_params=P,
            config_bytes=b"c",
            config=LedgerConfig(validators=1, backend="cryptography", qrng="seeded"),
            seed=seed,
        )
        plans = [keeper.open_round(t, 20, 5, sample_clients).sampled for t in range(3)]
        keeper.close()
        return plans

    first, again, other = sampled("a.db", 1), sampled("b.db", 1), sampled("c.db", 2)
    assert first == again
    assert first != other
    assert len(set(first)) > 1  # rounds differ
