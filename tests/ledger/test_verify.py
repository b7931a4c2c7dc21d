"""Full ledger verification: an honest certified chain passes, every kind of tampering fails."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from federated.aggregate import fedavg
from ledger.consensus import Consensus, Validator
from ledger.contract import Contract, update_signature_check
from ledger.crypto import CTX_BLOCK, CTX_UPDATE, Signer, Verifier, liboqs_library, signer_from_seed
from ledger.encoding import LedgerIntegrityError, digest, weights_digest
from ledger.keys import derive_seed, master_secret_from_run_seed
from ledger.records import (
    ZERO_HASH,
    Block,
    Fallback,
    Genesis,
    Rejection,
    RoundClose,
    RoundOpen,
    Transaction,
    UnsignedUpdate,
    Update,
    encode_certificate,
    make_block,
    update_signing_payload,
)
from ledger.store import LedgerStore
from ledger.verify import VerifyReport, verify_ledger

RUN_ID = "run-verify"
MASTER = master_secret_from_run_seed(21)
P = 8
CLIENTS = range(6)
SAMPLED = (0, 1, 2, 3, 4)  # client 5 is registered, never sampled
HONEST = (0, 1, 2, 3)
BACKENDS = [
    "cryptography",
    pytest.param(
        "liboqs",
        marks=pytest.mark.skipif(liboqs_library() is None, reason="liboqs not built"),
    ),
]


@dataclass
class Chain:
    blocks: list[Block]
    validators: dict[int, Signer]
    clients: dict[int, Signer]
    backend: str

    @property
    def txs(self) -> list[list[Transaction]]:
        return [list(b.transactions) for b in self.blocks]


def nonce(client: int, rnd: int, salt: int = 0) -> bytes:
    return bytes([client, rnd, salt]) + bytes(13)


def sign_update(
    signer: Signer, client: int, rnd: int, delta: np.ndarray, *, n: bytes | None = None
) -> Update:
    unsigned = UnsignedUpdate(
        client_id=client,
        round=rnd,
        nonce=nonce(client, rnd) if n is None else n,
        delta_digest=weights_digest(delta),
        num_examples=30 + client,
        path="quantum" if client % 2 else "classical",
        metrics={"loss": 400_000 + client},
    )
    return unsigned.signed(signer.sign(update_signing_payload(unsigned, RUN_ID), CTX_UPDATE))


def delta_of(client: int, rnd: int) -> np.ndarray:
    return (np.random.default_rng([client, rnd]).standard_normal(P) * 0.1).astype(np.float32)


def round_submissions(rnd: int, clients: dict[int, Signer], previous: list[tuple]) -> list[tuple]:
    """Honest updates of clients 0-3 plus the round's misbehaviour."""
    subs = [(sign_update(clients[c], c, rnd, delta_of(c, rnd)), delta_of(c, rnd)) for c in HONEST]
    if rnd == 1:  # client 4 sends NaN (authenticated, rejected: non_finite)
        nan = np.full(P, np.nan, dtype=np.float32)
        subs.append((sign_update(clients[4], 4, rnd, nan), nan))
    if rnd == 2:  # a forgery for client 4, a stale copy of round 1, a replay of this round
        forged = sign_update(clients[5], 4, rnd, delta_of(4, rnd))
        subs += [(forged, delta_of(4, rnd)), previous[0], subs[1]]
    if rnd == 3:  # an unsampled and an unregistered client
        stranger = signer_from_seed(derive_seed(MASTER, "client", 99), backend="cryptography")
        subs += [
            (sign_update(clients[5], 5, rnd, delta_of(5, rnd)), delta_of(5, rnd)),
            (sign_update(stranger, 99, rnd, delta_of(9, rnd)), delta_of(9, rnd)),
        ]
    return subs


def genesis(validators: dict[int, Signer], clients: dict[int, Signer], backend: str) -> Genesis:
    return Genesis(
        run_id=RUN_ID,
        config_hash=digest(b"config"),
        crypto_backend=backend,
        validators=[(i, s.public_key) for i, s in sorted(validators.items())],
        clients=[(i, s.public_key) for i, s in sorted(clients.items())],
    )


@pytest.fixture(scope="module", params=BACKENDS)
def chain(request) -> Chain:
    """Genesis + 3 rounds (an open block and a body block each), certified by 4 validators."""
    backend = request.param
    verifier = Verifier(backend)
    vsigners = {
        i: signer_from_seed(derive_seed(MASTER, "validator", i), backend=backend) for i in range(4)
    }
    csigners = {
        i: signer_from_seed(derive_seed(MASTER, "client", i), backend=backend) for i in CLIENTS
    }
    vkeys = {i: s.public_key for i, s in vsigners.items()}
    ckeys = {i: s.public_key for i, s in csigners.items()}
    validators = [
        Validator(i, s, vkeys, np.random.default_rng([7, i]).bytes, verifier=verifier)
        for i, s in vsigners.items()
    ]
    consensus = Consensus(vkeys, verifier=verifier)
    check = update_signature_check(verifier, ckeys, RUN_ID)
    contract = Contract(RUN_ID, ckeys, num_params=P, norm_bound=5.0, verifier=verifier)
    tx_lists: list[tuple[int, list[Transaction]]] = [(0, [genesis(vsigners, csigners, backend)])]
    previous: list[tuple] = []
    for rnd in (1, 2, 3):
        contract.open_round(rnd, SAMPLED)
        plan = {c: ("quantum" if c % 2 else "classical") for c in SAMPLED}
        tx_lists.append(
            (rnd, [RoundOpen(round=rnd, beacon=digest(b"%d" % rnd), sampled=SAMPLED, plan=plan)])
        )
        accepted, rejections = contract.admit(round_submissions(rnd, csigners, previous))
        previous = accepted
        aggregate = fedavg([d for _, d in accepted], [u.num_examples for u, _ in accepted])
        body: list[Transaction] = [u for u, _ in accepted] + rejections
        if rnd == 2:
            body.append(Fallback(client_id=1, round=2, resource="aer", reason="simulator crashed"))
        body.append(
            RoundClose(
                round=rnd,
                aggregate_weights_digest=weights_digest(aggregate),
                accepted=sorted(u.client_id for u, _ in accepted),
                metrics={"accuracy": 900_000},
            )
        )
        tx_lists.append((rnd, body))
    blocks, prev = [], ZERO_HASH
    for height, (rnd, txs) in enumerate(tx_lists):
        decision = consensus.run_height(
            height, prev, txs, validators, round=rnd, check_transactions=check
        )
        blocks.append(decision.block)
        prev = decision.block.hash
    return Chain(blocks=blocks, validators=vsigners, clients=csigners, backend=backend)


def write(path: Path, blocks: list[Block]) -> Path:
    with LedgerStore(path) as store:
        for block in blocks:
            store.append(block)
    return path


def certify(block: Block, signers: dict[int, Signer], indices=range(4)) -> Block:
    return block.with_certificate(
        tuple((i, signers[i].sign(block.hash, CTX_BLOCK)) for i in indices)
    )


def rebuild(chain: Chain, tx_lists: list[list[Transaction]]) -> list[Block]:
    """A chain over `tx_lists`, validly linked and certified by every validator."""
    blocks, prev = [], ZERO_HASH
    for height, txs in enumerate(tx_lists):
        round_ = next((tx.round for tx in txs if hasattr(tx, "round")), 0)
        block = make_block(
            height=height, prev_hash=prev, proposer=height % 4, round=round_, transactions=txs
        )
        blocks.append(certify(block, chain.validators))
        prev = block.hash
    return blocks


def rewrite(path: Path, sql: str, params: tuple) -> None:
    """Change rows the way an attacker with file access would: triggers dropped, then the
    rows changed and the triggers put back (a dropped trigger alone is found, see
    tests/ledger/test_store.py)."""
    conn = sqlite3.connect(path)
    try:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='trigger'")
        triggers = triggers.fetchall()
        for name, _ in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        conn.execute(sql, params)
        for _, trigger_sql in triggers:
            conn.execute(trigger_sql)
        conn.commit()
    finally:
        conn.close()


def fails_at(path: Path, height: int, index: int | None, match: str, **kw) -> LedgerIntegrityError:
    with pytest.raises(LedgerIntegrityError, match=match) as info:
        verify_ledger(path, **kw)
    assert (info.value.height, info.value.index) == (height, index), str(info.value)
    return info.value


# --------------------------------------------------------------------------- the honest chain


def test_honest_chain_verifies(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    head = chain.blocks[-1].hash
    report = verify_ledger(path, head=head, backend=chain.backend)
    assert isinstance(report, VerifyReport)
    n_updates = sum(isinstance(tx, Update) for b in chain.blocks for tx in b.transactions)
    assert n_updates == 12
    assert report.height == 6 and report.blocks == 7 and report.head_hash == head
    assert report.transactions == sum(len(b.transactions) for b in chain.blocks)
    assert report.signatures_checked == 7 * 3 + n_updates
    assert report.rounds_closed == 3
    assert report.backend == chain.backend
    rules = [
        (tx.client_id, tx.rule)
        for b in chain.blocks
        for tx in b.transactions
        if isinstance(tx, Rejection)
    ]
    assert rules == [
        (4, "non_finite"),
        (4, "bad_signature"),
        (0, "wrong_round"),
        (1, "replayed_nonce"),
        (5, "not_sampled"),
        (99, "unregistered"),
    ]
    assert verify_ledger(path, backend="auto").head_hash == head  # any backend verifies


def test_verification_is_read_only(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    before = path.read_bytes()
    verify_ledger(path, backend=chain.backend)
    assert path.read_bytes() == before


def test_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(LedgerIntegrityError, match="no ledger"):
        verify_ledger(tmp_path / "absent.db")


# --------------------------------------------------------------------------- head, truncation


def test_wrong_head_fails(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    fails_at(path, 6, None, "differs from the expected head", head=chain.blocks[5].hash)
    fails_at(path, 6, None, "truncated or forked", head=digest(b"a fork"))


def test_truncated_copy_fails_against_the_full_head(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "short.db", chain.blocks[:4])  # ends inside round 2
    assert verify_ledger(path).height == 3  # a consistent prefix on its own
    fails_at(path, 3, None, "differs from the expected head", head=chain.blocks[-1].hash)


# --------------------------------------------------------------------------- tampered bytes


def update_position(chain: Chain, height: int, client: int) -> int:
    txs = chain.blocks[height].transactions
    return next(i for i, tx in enumerate(txs) if isinstance(tx, Update) and tx.client_id == client)


def test_flipped_signature_byte_in_the_file_fails(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    idx = update_position(chain, 4, 1)
    update = chain.blocks[4].transactions[idx]
    conn = sqlite3.connect(path)
    (body,) = conn.execute(
        "SELECT body FROM transactions WHERE height=4 AND idx=?", (idx,)
    ).fetchone()
    conn.close()
    at = body.index(update.signature) + 1000
    tampered = body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]
    rewrite(path, "UPDATE transactions SET body=? WHERE height=4 AND idx=?", (tampered, idx))
    fails_at(path, 4, None, "merkle_root")


def test_bad_update_signature_in_a_certified_block_names_block_and_tx(
    chain: Chain, tmp_path: Path
) -> None:
    """Even with every validator colluding (the block re-hashed and re-certified)."""
    txs = chain.txs
    idx = update_position(chain, 4, 1)
    signature = bytearray(txs[4][idx].signature)
    signature[1000] ^= 0x01
    txs[4][idx] = Update.model_construct(**{**dict(txs[4][idx]), "signature": bytes(signature)})
    path = write(tmp_path / "ledger.db", rebuild(chain, txs))
    fails_at(path, 4, idx, "bad signature")


@pytest.mark.parametrize("height", [0, 3])
def test_certificate_with_two_of_four_valid_signatures_fails(
    chain: Chain, tmp_path: Path, height: int
) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    block = chain.blocks[height]
    valid = tuple((i, chain.validators[i].sign(block.hash, CTX_BLOCK)) for i in (0, 1))
    junk = tuple((i, bytes(3309)) for i in (2, 3))
    for certificate, message in [(valid, "2 distinct valid"), (valid + junk, "invalid signature")]:
        rewrite(
            path,
            "UPDATE blocks SET certificate=? WHERE height=?",
            (encode_certificate(certificate), height),
        )
        fails_at(path, height, None, message)


def test_certificate_of_another_block_fails(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    borrowed = encode_certificate(chain.blocks[2].certificate)
    rewrite(path, "UPDATE blocks SET certificate=? WHERE height=?", (borrowed, 3))
    fails_at(path, 3, None, "quorum certificate")


def test_certificate_by_non_genesis_validators_fails(chain: Chain, tmp_path: Path) -> None:
    outsiders = {
        i: signer_from_seed(derive_seed(MASTER, "validator", 10 + i), backend=chain.backend)
        for i in range(4)
    }
    blocks = rebuild(chain, chain.txs)
    blocks[2] = certify(blocks[2], outsiders)
    fails_at(write(tmp_path / "ledger.db", blocks), 2, None, "quorum certificate")


# --------------------------------------------------------------------------- rule violations


Mutation = Callable[[Chain, list[list[Transaction]]], tuple[int, int | None]]


def _close_mismatch(chain, txs):
    close = txs[2][-1]
    txs[2][-1] = close.model_copy(update={"accepted": (0, 1, 2)})
    return 2, len(txs[2]) - 1


def _unsampled_update(chain, txs):
    update = sign_update(chain.clients[5], 5, 3, delta_of(5, 3), n=nonce(5, 3, 7))
    txs[6].insert(0, update)
    return 6, 0


def _unregistered_update(chain, txs):
    stranger = signer_from_seed(derive_seed(MASTER, "client", 77), backend=chain.backend)
    txs[6].insert(0, sign_update(stranger, 77, 3, delta_of(7, 3)))
    return 6, 0


def _nonce_reused_across_rounds(chain, txs):
    idx = update_position(chain, 4, 2)
    txs[4][idx] = sign_update(chain.clients[2], 2, 2, delta_of(2, 2), n=nonce(2, 1))
    return 4, idx


def _two_updates_from_one_client(chain, txs):
    txs[4].insert(1, sign_update(chain.clients[0], 0, 2, delta_of(0, 2), n=nonce(0, 2, 5)))
    return 4, 1


def _update_for_another_round(chain, txs):
    idx = update_position(chain, 4, 3)
    txs[4][idx] = sign_update(chain.clients[3], 3, 1, delta_of(3, 1), n=nonce(3, 1, 5))
    return 4, idx


def _rejected_nonce_accepted_later(chain, txs):
    # client 4's NaN update of round 1 was rejected after authentication: its nonce is burned
    txs[4].insert(0, sign_update(chain.clients[4], 4, 2, delta_of(4, 2), n=nonce(4, 1)))
    return 4, 0


def _accepted_update_also_rejected(chain, txs):
    txs[2].insert(
        4, Rejection(client_id=2, round=1, nonce=nonce(2, 1), rule="norm_bound", detail="x")
    )
    return 2, 4


def _phantom_replay(chain, txs):
    txs[6].insert(
        4, Rejection(client_id=4, round=3, nonce=nonce(4, 3, 3), rule="replayed_nonce", detail="")
    )
    return 6, 4


def _registered_called_unregistered(chain, txs):
    txs[6].insert(
        4, Rejection(client_id=1, round=3, nonce=nonce(1, 3, 3), rule="unregistered", detail="")
    )
    return 6, 4


def _sampled_called_not_sampled(chain, txs):
    txs[6].insert(
        4, Rejection(client_id=4, round=3, nonce=nonce(4, 3, 3), rule="not_sampled", detail="")
    )
    return 6, 4


def _unsampled_bad_signature(chain, txs):
    txs[6].insert(
        4, Rejection(client_id=5, round=3, nonce=nonce(5, 3, 3), rule="bad_signature", detail="")
    )
    return 6, 4


def _rejection_for_another_round(chain, txs):
    txs[6].insert(
        4, Rejection(client_id=4, round=2, nonce=nonce(4, 3, 3), rule="wrong_round", detail="")
    )
    return 6, 4


def _second_genesis(chain, txs):
    txs[1].append(txs[0][0])
    return 1, 1


def _genesis_block_with_two_transactions(chain, txs):
    txs[0].append(txs[1][0])
    return 0, None


def _update_before_round_open(chain, txs):
    txs[1].insert(0, txs[2][0])
    return 1, 0


def _round_opens_before_close(chain, txs):
    txs[2].pop()  # round 1 never closes
    return 3, 0


def _round_number_repeats(chain, txs):
    txs[5][0] = txs[5][0].model_copy(update={"round": 2})
    return 5, 0


def _round_open_samples_a_stranger(chain, txs):
    open_ = txs[5][0]
    txs[5][0] = RoundOpen(
        round=3,
        beacon=open_.beacon,
        sampled=(0, 1, 2, 3, 4, 42),
        plan={**open_.plan, 42: "quantum"},
    )
    return 5, 0


def _fallback_of_unsampled(chain, txs):
    txs[6].insert(0, Fallback(client_id=5, round=3, resource="aer", reason="x"))
    return 6, 0


def _close_without_open(chain, txs):
    txs[2].append(txs[2][-1])  # round 1 closes twice
    return 2, len(txs[2]) - 1


MUTATIONS: dict[str, tuple[Mutation, str]] = {
    "close_mismatch": (_close_mismatch, "closes with accepted"),
    "unsampled_update": (_unsampled_update, "not sampled"),
    "unregistered_update": (_unregistered_update, "not registered"),
    "nonce_reused_across_rounds": (_nonce_reused_across_rounds, "already used"),
    "two_updates_from_one_client": (_two_updates_from_one_client, "second update"),
    "update_for_another_round": (_update_for_another_round, "for round 1, the open round is 2"),
    "rejected_nonce_accepted_later": (_rejected_nonce_accepted_later, "already used"),
    "accepted_update_also_rejected": (_accepted_update_also_rejected, "nonce is used by block 2"),
    "phantom_replay": (_phantom_replay, "was never used"),
    "registered_called_unregistered": (_registered_called_unregistered, "is registered"),
    "sampled_called_not_sampled": (_sampled_called_not_sampled, "is sampled"),
    "unsampled_bad_signature": (_unsampled_bad_signature, "would be 'not_sampled'"),
    "rejection_for_another_round": (_rejection_for_another_round, "open round is 3"),
    "second_genesis": (_second_genesis, "a second Genesis"),
    "genesis_block_with_two_transactions": (_genesis_block_with_two_transactions, "exactly one"),
    "update_before_round_open": (_update_before_round_open, "outside an open round"),
    "round_opens_before_close": (_round_opens_before_close, "before round 1 closed"),
    "round_number_repeats": (_round_number_repeats, "does not follow round 2"),
    "round_open_samples_a_stranger": (_round_open_samples_a_stranger, "unregistered clients"),
    "fallback_of_unsampled": (_fallback_of_unsampled, "not sampled"),
    "close_without_open": (_close_without_open, "outside an open round"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_rule_violation_names_block_and_transaction(
    chain: Chain, tmp_path: Path, name: str
) -> None:
    mutate, message = MUTATIONS[name]
    txs = chain.txs
    height, index = mutate(chain, txs)
    path = write(tmp_path / "ledger.db", rebuild(chain, txs))
    fails_at(path, height, index, message, backend=chain.backend)


def test_rebuilt_honest_chain_verifies(chain: Chain, tmp_path: Path) -> None:
    """The mutations' baseline: re-certifying the unmodified transactions passes."""
    blocks = rebuild(chain, chain.txs)
    report = verify_ledger(write(tmp_path / "ledger.db", blocks), head=blocks[-1].hash)
    assert report.signatures_checked == 7 * 4 + 12


def test_copy_of_a_verified_ledger_verifies(chain: Chain, tmp_path: Path) -> None:
    path = write(tmp_path / "ledger.db", chain.blocks)
    copy = tmp_path / "copy.db"
    with sqlite3.connect(path) as conn:  # flush the WAL into the main file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    shutil.copy(path, copy)
    assert verify_ledger(copy, head=chain.blocks[-1].hash).blocks == 7
