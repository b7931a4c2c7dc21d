"""Validators as Ray actors: phases resolved together, crashes, timeouts, Byzantine leaders."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import ray
from conftest import forging_tamper
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from actors.ledger_keeper import LedgerKeeperActor
from actors.validator import resolve_calls
from federated.messages import ClientUpdate, TrainedBatch
from ledger.consensus import InvalidProposal
from ledger.keeper import LedgerConfig, LedgerKeeper, sign_update, update_nonce
from ledger.keys import master_secret_from_run_seed
from ledger.store import open_readonly
from ledger.verify import verify_ledger

pytestmark = pytest.mark.usefixtures("ray_local")

MASTER = master_secret_from_run_seed(11)
P = 6
N = 5
CONFIG = LedgerConfig(
    validators=4,
    backend="cryptography",
    qrng="seeded",
    validator_timeout_s=60,
    validator_placement="actors",
)


@ray.remote(num_cpus=0)
class _Answers:
    """Answers in call order (one actor: the slow call, issued last, delays no other)."""

    def answer(self, kind: str):
        if kind == "refuse":
            raise InvalidProposal("merkle_root does not match the transactions")
        if kind == "crash":
            raise RuntimeError("out of memory")
        if kind == "slow":
            time.sleep(60)
        return kind

    def pid(self) -> int:
        return os.getpid()


def test_resolve_gives_values_unwrapped_errors_deaths_and_timeouts():
    answers, doomed = _Answers.remote(), _Answers.remote()
    ray.get([answers.pid.remote(), doomed.pid.remote()])  # both started
    ray.kill(doomed)
    pending = [
        answers.answer.remote("ok"),
        answers.answer.remote("refuse"),
        answers.answer.remote("crash"),
        doomed.answer.remote("ok"),
        answers.answer.remote("slow"),
    ]
    ok, refused, crashed, dead, slow = resolve_calls(pending, timeout_s=8.0)
    assert ok == "ok"
    # the validator's own error comes back as itself: a refusal, not a crash
    assert type(refused) is InvalidProposal and "merkle_root" in str(refused)
    assert type(crashed) is RuntimeError and not isinstance(crashed, RayTaskError)
    assert isinstance(dead, RayActorError)
    assert isinstance(slow, GetTimeoutError)
    assert resolve_calls([], timeout_s=1.0) == []
    ray.kill(answers)


def _updates(round_: int, sampled, backend: str = "cryptography") -> list[ClientUpdate]:
    rng = np.random.default_rng(round_)
    out = []
    for client in sampled:
        delta = rng.normal(size=P).astype(np.float32)
        record = sign_update(
            run_id="run-validators",
            master_secret=MASTER,
            client_id=client,
            round_=round_,
            nonce=update_nonce(MASTER, round_, client),
            delta=delta,
            num_examples=10,
            path="classical",
            metrics={"loss": 0.5},
            backend=backend,
        )
        out.append(
            ClientUpdate(
                client_id=client,
                round=round_,
                num_samples=10,
                loss=0.5,
                delta=delta,
                seconds=0.0,
                record=record,
            )
        )
    return out


def _keeper_actor(path, **kwargs):
    return LedgerKeeperActor.remote(
        path,
        run_id="run-validators",
        master_secret=MASTER,
        n_clients=N,
        num_params=P,
        config_bytes=b"config",
        config=kwargs.pop("config", CONFIG),
        seed=7,
        **kwargs,
    )


def _round(keeper, round_: int, plan, *, last: bool = False):
    part = TrainedBatch(updates=tuple(_updates(round_, plan.sampled)))
    accepted, rejections, _ = ray.get(keeper.admit.remote(part))
    assert accepted == list(plan.sampled) and rejections == []
    following = None if last else (round_ + 1, N, 3)
    closed = ray.get(
        keeper.close_round.remote(
            round_, np.zeros(P, np.float32), {"acc": 0.5}, next_round=following
        )
    )
    return closed.next


def _signers(path) -> list[list[int]]:
    with open_readonly(path) as store:
        return [[i for i, _ in block.certificate] for block in store.blocks()]


def test_validator_actors_vote_together_and_a_killed_one_is_left_out(tmp_path):
    path = tmp_path / "ledger.db"
    keeper = _keeper_actor(path)
    validators = ray.get(keeper.validators.remote())
    assert ray.get([v.ready.remote() for v in validators]) == [0, 1, 2, 3]  # four actors
    plan = ray.get(keeper.open_round.remote(0, N, 3))
    plan = _round(keeper, 0, plan)  # height 2
    ray.kill(ray.get(keeper.validators.remote())[2])
    plan = _round(keeper, 1, plan)  # height 3: validator 2 found dead
    assert ray.get(keeper.last_decision.remote()).faulty == (2,)
    _round(keeper, 2, plan, last=True)  # height 4
    height, head = ray.get(keeper.head.remote())
    ray.get(keeper.close.remote())
    verify_ledger(path, head=head)
    signers = _signers(path)
    assert signers[:3] == [[0, 1, 2, 3]] * 3  # all at once: every vote, not just a quorum
    assert signers[3:] == [[0, 1, 3]] * 2


def test_a_byzantine_validator_actor_is_refused_and_not_counted_as_crashed(tmp_path):
    path = tmp_path / "ledger.db"
    # the beacon does not depend on where the validators run nor on the proposals: the
    # genesis leader of an in-process keeper with the same seed is made Byzantine
    honest = LedgerKeeper(
        tmp_path / "honest.db",
        run_id="run-validators",
        master_secret=MASTER,
        n_clients=N,
        num_params=P,
        config_bytes=b"config",
        config=CONFIG,
        seed=7,
    )
    first_leader = honest.last_decision.leader  # of block 0
    honest.close()
    keeper = _keeper_actor(path, tamper={first_leader: forging_tamper()})
    decision = ray.get(keeper.last_decision.remote())
    assert decision.attempt == 1 and decision.leader != first_leader
    assert decision.faulty == ()  # its validators refused the block; none crashed
    assert "no quorum (0 of 3 votes)" in decision.failures[0].reason
    assert len(decision.block.certificate) == 4  # the Byzantine validator votes honestly
    plan = ray.get(keeper.open_round.remote(0, N, 3))
    _round(keeper, 0, plan, last=True)
    height, head = ray.get(keeper.head.remote())
    ray.get(keeper.close.remote())
    verify_ledger(path, head=head)


def test_in_process_placement_keeps_the_validators_in_the_keeper(tmp_path):
    path = tmp_path / "ledger.db"
    config = CONFIG.model_copy(update={"validator_placement": "in_process"})
    keeper = _keeper_actor(path, config=config)
    assert ray.get(keeper.validators.remote()) == []
    plan = ray.get(keeper.open_round.remote(0, N, 3))
    _round(keeper, 0, plan, last=True)
    _, head = ray.get(keeper.head.remote())
    ray.get(keeper.close.remote())
    verify_ledger(path, head=head)
    assert _signers(path) == [[0, 1, 2]] * 3  # in process: votes stop at the quorum
