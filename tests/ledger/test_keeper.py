"""A run's ledger written through LedgerKeeper verifies, and records what the contract did."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from conftest import forging_tamper
from cryptography.hazmat.primitives.asymmetric import mlkem

from federated.sampling import sample_clients
from ledger.consensus import Beacon, ConsensusError, leader_for
from ledger.crypto import BackendUnavailable, liboqs_library
from ledger.keeper import (
    LedgerConfig,
    LedgerKeeper,
    Opening,
    build_validator,
    client_kem_keys,
    client_kem_seed,
    sign_update,
    update_nonce,
)
from ledger.keys import derive_seed, master_secret_from_run_seed
from ledger.records import Rejection, RoundClose, RoundOpen, Update, encode_tx
from ledger.store import LedgerIntegrityError, open_readonly
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


# --------------------------------------------------------------------------- validator hosts


class _Call:
    def __init__(self, index, run):
        self.index, self.run = index, run


class _Handle:
    """A validator behind pending calls (what a `ValidatorHost` hands the keeper)."""

    def __init__(self, validator):
        self.validator, self.index = validator, validator.index

    def commit(self, height):
        return _Call(self.index, lambda: self.validator.commit(height))

    def reveal(self, height):
        return _Call(self.index, lambda: self.validator.reveal(height))

    def reveal_and_commit(self, height):
        return _Call(self.index, lambda: self.validator.reveal_and_commit(height))

    def propose(self, **kwargs):
        return _Call(self.index, lambda: self.validator.propose(**kwargs))

    def endorse(self, block, *, check_transactions=None, **kwargs):
        return _Call(self.index, lambda: self.validator.endorse(block, **kwargs))

    def precheck(self, transactions):
        return _Call(self.index, lambda: self.validator.precheck(transactions))


class InlineHost:
    """A `ValidatorHost` in this process: validators built as the actors build them (own
    signer, verifier and QRNG); `down` validators answer every call with a crash."""

    def __init__(self, down=()):
        self.down, self.started, self.stopped, self.posted = set(down), [], False, []

    def start(self, specs, registry, tamper=None):
        tamper = tamper or {}
        self.started = [build_validator(s, registry, tamper=tamper.get(s.index)) for s in specs]
        return [_Handle(v) for v in self.started]

    def resolve(self, pending):
        out = []
        for call in pending:
            if call.index in self.down:
                out.append(RuntimeError(f"validator {call.index} died"))
                continue
            try:
                out.append(call.run())
            except Exception as exc:
                out.append(exc)
        return out

    def share(self, value):
        return value

    def post(self, pending):
        self.posted += [
            (call.index, result)
            for call, result in zip(pending, self.resolve(pending), strict=True)
        ]

    def stop(self):
        self.stopped = True


def _keeper(path, *, config, host=None, tamper=None, master=MASTER, run_id="run-1"):
    return LedgerKeeper(
        path,
        run_id=run_id,
        master_secret=master,
        n_clients=5,
        num_params=P,
        config_bytes=b"config",
        config=config,
        seed=3,
        host=host,
        tamper=tamper,
    )


def _two_rounds(keeper, backend, *, deterministic=False) -> tuple[int, bytes]:
    rng = np.random.default_rng(0)
    plan = keeper.open_round(0, 5, 3, sample_clients)
    for round_ in range(2):
        pairs = []
        for client in plan.sampled:
            delta = rng.normal(size=P).astype(np.float32)
            update = sign_update(
                run_id=keeper.run_id,
                master_secret=MASTER,
                client_id=client,
                round_=round_,
                nonce=update_nonce(MASTER, round_, client),
                delta=delta,
                num_examples=10,
                path="classical",
                metrics={"loss": 0.5},
                backend=backend,
                deterministic=deterministic,
            )
            pairs.append((update, delta))
        keeper.admit(pairs)
        opening = Opening(round=round_ + 1, n_clients=5, per_round=3, sample=sample_clients)
        closed = keeper.close_round(round_, np.zeros(P, np.float32), {"acc": 0.5}, (), opening)
        plan = closed.next
    head = keeper.head
    keeper.close()
    return head


@pytest.mark.parametrize("backend", BACKENDS)
def test_validators_behind_a_host_certify_with_every_vote(tmp_path, backend):
    config = LedgerConfig(validators=4, backend=backend, qrng="seeded")
    host = InlineHost()
    keeper = _keeper(tmp_path / "l.db", config=config, host=host)
    height, head = _two_rounds(keeper, backend)
    assert host.stopped and len(host.started) == 4
    assert all(v.verifier is not keeper.verifier for v in host.started)  # their own
    # each round's 3 accepted updates were prechecked by all four, as they were admitted
    assert sorted(host.posted) == sorted((i, 3) for i in range(4) for _ in range(2))
    assert all(not v._prechecked for v in host.started)  # and dropped once in a block
    report = verify_ledger(tmp_path / "l.db", head=head, backend=backend)
    assert report.height == height == 3  # genesis, open 0, close 0 + open 1, close 1 + open 2
    with open_readonly(tmp_path / "l.db") as store:
        assert all(len(b.certificate) == 4 for b in store.blocks())


def test_in_process_validators_share_one_precheck_of_the_admitted_updates(tmp_path):
    """Admission prechecks the accepted updates once for the four validators of the
    keeper's process; the table holds exactly them until their block is stored."""
    config = LedgerConfig(validators=4, qrng="seeded", validator_placement="in_process")
    keeper = _keeper(tmp_path / "l.db", config=config)
    assert all(v._prechecked is keeper._prechecked for v in keeper.validators)
    plan = keeper.open_round(0, 5, 3, sample_clients)
    rng = np.random.default_rng(0)
    pairs = [
        (_update(0, k, delta, backend=keeper.backend), delta)
        for k in plan.sampled
        for delta in [rng.normal(size=P).astype(np.float32)]
    ]
    forged = pairs[0][0].model_copy(update={"client_id": plan.sampled[1]})  # signed by another
    accepted, rejections, _ = keeper.admit([*pairs[:1], (forged, pairs[1][1]), *pairs[1:]])
    assert accepted == list(plan.sampled) and [r.rule for r in rejections] == ["bad_signature"]
    assert set(keeper._prechecked) == {encode_tx(u) for u, _ in pairs}
    keeper.close_round(0, np.zeros(P, np.float32), {"acc": 0.5})
    assert keeper._prechecked == {}  # in a block now
    height, head = keeper.head
    keeper.close()
    assert verify_ledger(tmp_path / "l.db", head=head).height == height == 2


def test_a_crashed_validator_is_left_out_and_two_stop_the_keeper(tmp_path):
    config = LedgerConfig(validators=4, backend="cryptography", qrng="seeded")
    keeper = _keeper(tmp_path / "one.db", config=config, host=InlineHost(down={2}))
    _, head = _two_rounds(keeper, "cryptography")
    verify_ledger(tmp_path / "one.db", head=head)
    with open_readonly(tmp_path / "one.db") as store:
        assert all([i for i, _ in b.certificate] == [0, 1, 3] for b in store.blocks())
    with pytest.raises(ConsensusError, match="cannot certify block 0.*tolerate 1"):
        _keeper(tmp_path / "two.db", config=config, host=InlineHost(down={1, 2}))


def _attempt_leaders(path) -> dict[int, tuple[int, int]]:
    """height -> (attempt-0 leader, attempt-1 leader), from the beacons that RoundOpen
    records (a block opening a round holds its height's beacon)."""
    leaders = {}
    with open_readonly(path) as store:
        for block in store.blocks():
            opens = [tx for tx in block.transactions if isinstance(tx, RoundOpen)]
            if opens:
                beacon = Beacon(
                    height=block.height, value=opens[0].beacon, included=(), excluded=()
                )
                leaders[block.height] = (
                    leader_for(beacon, range(4)),
                    leader_for(beacon, range(4), 1),
                )
    return leaders


@pytest.mark.parametrize("placement", ["in_process", "host"])
def test_a_byzantine_leader_gets_no_quorum_and_the_next_leader_proceeds(tmp_path, placement):
    """The validator that leads height 2 first proposes blocks with a forged update
    signature: that height is certified by the next leader, and the ledger verifies."""

    forge = forging_tamper()

    config = LedgerConfig(validators=4, backend="cryptography", qrng="seeded")
    _two_rounds(_keeper(tmp_path / "honest.db", config=config), "cryptography")
    honest = _attempt_leaders(tmp_path / "honest.db")
    byzantine, next_leader = honest[2]  # the beacon does not depend on the proposals
    host = InlineHost() if placement == "host" else None
    keeper = _keeper(tmp_path / "l.db", config=config, host=host, tamper={byzantine: forge})
    _, head = _two_rounds(keeper, "cryptography")
    verify_ledger(tmp_path / "l.db", head=head)
    assert _attempt_leaders(tmp_path / "l.db") == honest
    with open_readonly(tmp_path / "l.db") as store:
        proposers = {b.height: b.header.proposer for b in store.blocks()}
    assert proposers[2] == next_leader != byzantine
    assert byzantine not in proposers.values()


@pytest.mark.skipif(not liboqs_library(), reason="deterministic signing needs liboqs")
def test_deterministic_signatures_make_identical_ledgers(tmp_path):
    def ledger(name, signatures):
        config = LedgerConfig(validators=4, backend="liboqs", qrng="seeded", signatures=signatures)
        keeper = _keeper(tmp_path / name, config=config)
        head = _two_rounds(keeper, "liboqs", deterministic=signatures == "deterministic")
        with open_readonly(tmp_path / name) as store:
            return head, list(store.blocks())

    (head_a, blocks_a), (head_b, blocks_b) = (
        ledger("a.db", "deterministic"),
        ledger("b.db", "deterministic"),
    )
    assert head_a == head_b
    assert blocks_a == blocks_b  # certificates (validator signatures) included
    (head_c, blocks_c), (head_d, blocks_d) = ledger("c.db", "hedged"), ledger("d.db", "hedged")
    assert head_c != head_d  # hedged client signatures differ from run to run
    assert [b.certificate for b in blocks_c] != [b.certificate for b in blocks_d]


def test_deterministic_signatures_need_liboqs(tmp_path):
    config = LedgerConfig(backend="cryptography", signatures="deterministic")
    with pytest.raises(BackendUnavailable, match="deterministic"):
        _keeper(tmp_path / "l.db", config=config)


def test_a_received_update_is_recorded_by_its_fields_never_by_a_memo_it_carries(tmp_path):
    """An update arrives pickled: its encoding memo could be another (validly signed) update
    of the same client. The keeper forgets it: what is checked is what is recorded."""
    from ledger.records import _decode_tx, encode_tx

    config = LedgerConfig(validators=1, backend="cryptography", qrng="seeded")
    keeper = _keeper(tmp_path / "l.db", config=config)
    plan = keeper.open_round(0, 5, 3, sample_clients)
    client = plan.sampled[0]
    delta = np.ones(P, np.float32)

    def update(examples):
        return sign_update(
            run_id=keeper.run_id,
            master_secret=MASTER,
            client_id=client,
            round_=0,
            nonce=update_nonce(MASTER, 0, client),
            delta=delta,
            num_examples=examples,
            path="classical",
            metrics={},
            backend="cryptography",
        )

    honest, other = update(10), update(10_000)
    data, entries = encode_tx(other), _decode_tx(encode_tx(other))[1]
    object.__setattr__(honest, "__pydantic_private__", {"_encoding": data, "_entries": entries})
    accepted, rejections, _ = keeper.admit([(honest, delta)])
    assert accepted == [client] and rejections == []
    keeper.close_round(0, np.zeros(P, np.float32), {"acc": 0.5})
    keeper.close()
    with open_readonly(tmp_path / "l.db") as store:
        recorded = [tx for b in store.blocks() for tx in b.transactions if isinstance(tx, Update)]
    assert [u.num_examples for u in recorded] == [10]


# --------------------------------------------------------------------------- ML-KEM registry


def _kem_keeper(path, *, register, resume=False, master=MASTER):
    return LedgerKeeper(
        path,
        run_id="run-1",
        master_secret=master,
        n_clients=5,
        num_params=P,
        config_bytes=b"config",
        config=LedgerConfig(validators=1, backend="cryptography", qrng="seeded"),
        seed=3,
        resume=resume,
        register_kem_keys=register,
    )


def test_genesis_registers_each_clients_kem_key_next_to_its_signing_key(tmp_path):
    keeper = _kem_keeper(tmp_path / "l.db", register=True)
    head = _two_rounds(keeper, "cryptography")
    expected = {
        k: mlkem.MLKEM768PrivateKey.from_seed_bytes(client_kem_seed(MASTER, k))
        .public_key()
        .public_bytes_raw()
        for k in range(5)
    }
    assert keeper.kem_keys == expected == client_kem_keys(MASTER, 5)
    assert len({*expected.values()}) == 5 and {len(v) for v in expected.values()} == {1184}
    assert client_kem_seed(MASTER, 1) != derive_seed(MASTER, "client", 1)  # own HKDF info
    with open_readonly(tmp_path / "l.db") as store:
        (genesis,) = next(iter(store.blocks())).transactions
    assert genesis == keeper.genesis and dict(genesis.kem_keys) == expected
    assert [k for k, _ in genesis.kem_keys] == [k for k, _ in genesis.clients]
    report = verify_ledger(tmp_path / "l.db", head=head[1], backend="cryptography")
    assert (report.height, report.rounds_closed) == (3, 2)
    # a resumed run finds the same Genesis; one without the KEM keys is another run
    _kem_keeper(tmp_path / "l.db", register=True, resume=True).close()
    with pytest.raises(LedgerIntegrityError, match="genesis is not this run's"):
        _kem_keeper(tmp_path / "l.db", register=False, resume=True)


def test_a_resume_with_another_master_secret_is_refused_by_name(tmp_path):
    keeper = _kem_keeper(tmp_path / "l.db", register=False)
    _two_rounds(keeper, "cryptography")
    other = bytes(reversed(MASTER))
    with pytest.raises(LedgerIntegrityError, match="master secret the run started with"):
        _kem_keeper(tmp_path / "l.db", register=False, resume=True, master=other)
    _kem_keeper(tmp_path / "l.db", register=False, resume=True).close()  # the same one: fine


def test_without_secure_aggregation_genesis_registers_no_kem_keys(tmp_path):
    keeper = _kem_keeper(tmp_path / "l.db", register=False)
    assert keeper.kem_keys == {} and keeper.genesis.kem_keys == ()
    keeper.close()


def test_a_flipped_bit_in_a_registered_kem_key_fails_verification(tmp_path):
    keeper = _kem_keeper(tmp_path / "l.db", register=True)
    key = keeper.kem_keys[2]
    keeper.close()
    verify_ledger(tmp_path / "l.db")
    conn = sqlite3.connect(tmp_path / "l.db")
    try:
        (body,) = conn.execute("SELECT body FROM transactions WHERE height=0").fetchone()
        at = body.index(key) + 700
        tampered = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'")
        triggers = triggers.fetchall()
        for name, _ in triggers:  # as an attacker with file access would
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute("UPDATE transactions SET body=? WHERE height=0", (tampered,))
        for _, sql in triggers:
            conn.execute(sql)
        conn.commit()
    finally:
        conn.close()
    with pytest.raises(LedgerIntegrityError, match="merkle_root") as info:
        verify_ledger(tmp_path / "l.db")
    assert info.value.height == 0


@pytest.mark.parametrize(
    ("placement", "cpus", "expected"),
    [
        ("auto", 2.0, "in_process"),  # a laptop: 2 runners fill it
        ("auto", 5.0, "in_process"),  # one CPU short of a validator each
        ("auto", 6.0, "actors"),
        ("auto", 64.0, "actors"),
        ("actors", 2.0, "actors"),  # an explicit choice is kept
        ("in_process", 64.0, "in_process"),
    ],
)
def test_auto_placement_gives_validators_actors_only_with_a_cpu_each(placement, cpus, expected):
    from ledger.keeper import placement_for

    got = placement_for(placement, cluster_cpus=cpus, runner_cpus=2.0, validators=4)
    assert got == expected
