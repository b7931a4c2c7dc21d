"""Runs with faulty validators: each validator is a Ray actor; f = 1 of 4 is tolerated.

A validator actor killed mid-run is left out of the later quorum certificates and the
run completes; a Byzantine leader's blocks get no quorum and the next leader's do; two
killed validators of four stop the run with a clear error instead of hanging.
"""

from __future__ import annotations

import pytest
import ray
from conftest import QUICKSTART, forging_tamper
from mlflow.tracking import MlflowClient

import pipelines.run
from actors.ledger_keeper import LedgerKeeperActor
from ledger.consensus import Beacon, ConsensusError, leader_for
from ledger.records import RoundOpen
from ledger.store import open_readonly
from ledger.verify import verify_ledger
from pipelines.config import load_config
from pipelines.run import RunObserver, run_experiment

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(600)]

ROUNDS = 3


class KeeperSpy:
    """Stands in for `LedgerKeeperActor` in pipelines.run: keeps the handle, adds `tamper`."""

    def __init__(self, tamper=None):
        self.tamper = tamper
        self.keeper = None

    def remote(self, *args, **kwargs):
        if self.tamper is not None:
            kwargs["tamper"] = self.tamper
        self.keeper = LedgerKeeperActor.remote(*args, **kwargs)
        return self.keeper


class KillAfterFirstRound(RunObserver):
    """Kills validator actors as soon as the first round is recorded (its closing block
    may still be being certified)."""

    def __init__(self, spy: KeeperSpy, victims: tuple[int, ...]):
        self.spy, self.victims = spy, victims

    def on_round(self, record) -> None:
        if record.round == 1:
            validators = ray.get(self.spy.keeper.validators.remote())
            for index in self.victims:
                ray.kill(validators[index])


def _run(tmp_path, monkeypatch, name, *, spy, observer=None):
    config = load_config(
        QUICKSTART,
        [
            f"federation.rounds={ROUNDS}",
            "federation.clients_per_round=4",
            f"output.runs_dir={tmp_path / 'runs'}",
            f"tracking.run_name={name}",
            "ledger.validator_timeout_s=60",
            "ledger.validator_placement=actors",  # the validators are the actors it kills
        ],
    )
    monkeypatch.setattr(pipelines.run, "LedgerKeeperActor", spy)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return run_experiment(config, tracking_uri=uri, observer=observer), uri


def _signers(path) -> list[list[int]]:
    with open_readonly(path) as store:
        return [[i for i, _ in block.certificate] for block in store.blocks()]


def _leaders(path) -> dict[int, tuple[int, int, int]]:
    """height -> (proposer, attempt-0 leader, attempt-1 leader) of every block that opens a
    round (its RoundOpen records the height's beacon)."""
    out = {}
    with open_readonly(path) as store:
        for block in store.blocks():
            opens = [tx for tx in block.transactions if isinstance(tx, RoundOpen)]
            if opens:
                beacon = Beacon(
                    height=block.height, value=opens[0].beacon, included=(), excluded=()
                )
                out[block.height] = (
                    block.header.proposer,
                    leader_for(beacon, range(4)),
                    leader_for(beacon, range(4), 1),
                )
    return out


@pytest.fixture(scope="module")
def killed_one(tmp_path_factory):
    """A run whose validator 2 is killed after the first round."""
    tmp = tmp_path_factory.mktemp("killed-one")
    with pytest.MonkeyPatch.context() as monkeypatch:
        spy = KeeperSpy()
        summary, _ = _run(
            tmp, monkeypatch, "killed-one", spy=spy, observer=KillAfterFirstRound(spy, (2,))
        )
    return summary


def test_a_killed_validator_actor_does_not_stop_the_run(killed_one):
    assert killed_one.rounds == ROUNDS
    report = verify_ledger(killed_one.ledger_path, head=bytes.fromhex(killed_one.ledger_head))
    assert report.height == ROUNDS + 1 and report.rounds_closed == ROUNDS
    signers = _signers(killed_one.ledger_path)
    # genesis and round 0's open: all four validators; the last two blocks (rounds 1 and
    # 2 closing) without the dead one; round 0's closing block was being certified when
    # the kill came, so it holds either
    assert signers[:2] == [[0, 1, 2, 3]] * 2
    assert signers[2] in ([0, 1, 2, 3], [0, 1, 3])
    assert signers[3:] == [[0, 1, 3]] * 2


def test_a_byzantine_leader_gets_no_quorum_and_the_next_leader_proceeds(
    killed_one, tmp_path, monkeypatch
):
    # the beacons come from the validators' seeded QRNGs, not from the proposals: block 1
    # of this run has the same beacon, hence the same first leader, as the run above
    _, byzantine, next_leader = _leaders(killed_one.ledger_path)[1]
    spy = KeeperSpy(tamper={byzantine: forging_tamper()})
    summary, _ = _run(tmp_path, monkeypatch, "byzantine", spy=spy)
    assert summary.rounds == ROUNDS
    verify_ledger(summary.ledger_path, head=bytes.fromhex(summary.ledger_head))
    leaders = _leaders(summary.ledger_path)
    proposer, first, second = leaders[1]
    assert (first, second) == (byzantine, next_leader)
    assert proposer == next_leader  # the Byzantine leader's block got no quorum
    for proposer, first, second in leaders.values():  # wherever it led first, likewise
        assert proposer == (second if first == byzantine else first)
    with open_readonly(summary.ledger_path) as store:
        assert byzantine not in {b.header.proposer for b in store.blocks()}
    # a Byzantine leader is refused, not crashed: it still signs the others' blocks
    assert all(signers == [0, 1, 2, 3] for signers in _signers(summary.ledger_path))


def test_two_killed_validators_of_four_fail_the_run_clearly(tmp_path, monkeypatch):
    spy = KeeperSpy()
    observer = KillAfterFirstRound(spy, (1, 2))
    with pytest.raises(ConsensusError, match=r"cannot certify block \d+ .*tolerate 1") as info:
        _run(tmp_path, monkeypatch, "killed-two", spy=spy, observer=observer)
    assert "excluded: [1, 2]" in str(info.value) or "no quorum" in str(info.value)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs(client.get_experiment_by_name("quickstart").experiment_id)
    assert run.info.status == "FAILED"
