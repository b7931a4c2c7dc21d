"""BFT consensus: beacon, leaders, proposal checks, votes, certificates, faults."""

from __future__ import annotations

import numpy as np
import pytest

from ledger.consensus import (
    Beacon,
    BeaconError,
    CertificateError,
    Consensus,
    ConsensusError,
    InvalidProposal,
    QuorumCertificate,
    Validator,
    beacon_seed,
    check_certificate,
    check_equivocation,
    commitment_message,
    compute_beacon,
    detect_equivocation,
    forget_transactions,
    leader_for,
    max_faults,
    quorum_size,
)
from ledger.contract import update_signature_check
from ledger.crypto import (
    CTX_BEACON,
    CTX_BLOCK,
    CTX_UPDATE,
    Signer,
    Verifier,
    liboqs_library,
    signer_from_seed,
)
from ledger.encoding import digest
from ledger.keys import derive_seed, master_secret_from_run_seed
from ledger.records import (
    ZERO_HASH,
    Block,
    BlockHeader,
    RoundOpen,
    UnsignedUpdate,
    Update,
    encode_tx,
    make_block,
    update_signing_payload,
)
from qfl.errors import QflError
from quantum.qrng import QRNG

RUN_ID = "run-consensus"
MASTER = master_secret_from_run_seed(5)
PREV = digest(b"previous block")
BACKENDS = [
    "cryptography",
    pytest.param(
        "liboqs",
        marks=pytest.mark.skipif(liboqs_library() is None, reason="liboqs not built"),
    ),
]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def verifier(backend: str) -> Verifier:
    return Verifier(backend)


@pytest.fixture(scope="module")
def validator_signers(backend: str) -> dict[int, Signer]:
    return {
        i: signer_from_seed(derive_seed(MASTER, "validator", i), backend=backend) for i in range(4)
    }


@pytest.fixture(scope="module")
def client(backend: str) -> Signer:
    return signer_from_seed(derive_seed(MASTER, "client", 0), backend=backend)


def keys_of(signers: dict[int, Signer]) -> dict[int, bytes]:
    return {i: s.public_key for i, s in signers.items()}


def make_validators(signers: dict[int, Signer], verifier: Verifier, seed: int = 0):
    keys = keys_of(signers)
    return [
        Validator(i, s, keys, np.random.default_rng([seed, i]).bytes, verifier=verifier)
        for i, s in sorted(signers.items())
    ]


@pytest.fixture
def validators(validator_signers, verifier) -> list[Validator]:
    return make_validators(validator_signers, verifier)


@pytest.fixture
def consensus(validator_signers, verifier) -> Consensus:
    return Consensus(keys_of(validator_signers), verifier=verifier)


def signed_update(client: Signer, rnd: int = 1) -> Update:
    unsigned = UnsignedUpdate(
        client_id=0,
        round=rnd,
        nonce=bytes(range(16)),
        delta_digest=digest(b"delta"),
        num_examples=10,
        path="quantum",
        metrics={"loss": 1},
    )
    return unsigned.signed(client.sign(update_signing_payload(unsigned, RUN_ID), CTX_UPDATE))


def transactions(client: Signer) -> list:
    return [
        RoundOpen(round=1, beacon=b"beacon", sampled=[0], plan={0: "quantum"}),
        signed_update(client),
    ]


def run_beacon(validators, height: int = 7) -> Beacon:
    commitments = [v.commit(height) for v in validators]
    reveals = [v.reveal(height) for v in validators]
    beacons = {v.beacon(height, commitments, reveals) for v in validators}
    assert len(beacons) == 1
    return beacons.pop()


# --------------------------------------------------------------------------- quorum arithmetic


@pytest.mark.parametrize(
    ("n", "f", "q"), [(1, 0, 1), (2, 0, 2), (3, 0, 2), (4, 1, 3), (5, 1, 4), (7, 2, 5), (10, 3, 7)]
)
def test_quorum_sizes(n: int, f: int, q: int) -> None:
    assert max_faults(n) == f
    assert quorum_size(n) == q
    assert 2 * q - n > f  # any two quorums share an honest validator


def test_quorum_refuses_too_many_faults() -> None:
    with pytest.raises(ConsensusError):
        quorum_size(4, 2)
    with pytest.raises(ConsensusError):
        max_faults(0)


# --------------------------------------------------------------------------- beacon


def test_beacon_includes_every_revealer_and_everyone_agrees(validators) -> None:
    beacon = run_beacon(validators)
    assert beacon.included == (0, 1, 2, 3)
    assert beacon.excluded == ()
    assert beacon.height == 7
    again = run_beacon(validators)  # commit/reveal are fixed per height
    assert again == beacon


def test_beacon_differs_with_the_randomness(validator_signers, verifier) -> None:
    a = run_beacon(make_validators(validator_signers, verifier, seed=1))
    b = run_beacon(make_validators(validator_signers, verifier, seed=2))
    assert a.value != b.value
    assert beacon_seed(a) != beacon_seed(b)
    assert 0 <= beacon_seed(a) < 2**63


def test_exclusions_are_recorded(validators, verifier) -> None:
    height = 3
    keys = validators[0].keys
    commitments = [v.commit(height) for v in validators]
    reveals = [v.reveal(height) for v in validators]
    wrong = reveals[2].model_copy(update={"value": bytes(32)})  # does not open its commitment
    beacon = compute_beacon(
        height, commitments, [reveals[0], reveals[1], reveals[3], wrong], keys, verifier
    )
    assert beacon.included == (0, 1, 3)
    assert beacon.excluded == (2,)
    withheld = compute_beacon(height, commitments, reveals[:3], keys, verifier)
    assert withheld.excluded == (3,)
    assert withheld.value != beacon.value
    with pytest.raises(BeaconError, match="needs 3"):
        compute_beacon(height, commitments, [reveals[0], wrong], keys, verifier)


def test_forged_commitments_and_reveals_do_not_count(validators, verifier) -> None:
    height = 4
    keys = validators[0].keys
    commitments = [v.commit(height) for v in validators]
    reveals = [v.reveal(height) for v in validators]
    forged_commit = commitments[1].model_copy(update={"signature": bytes(3309)})
    forged_reveal = reveals[3].model_copy(update={"signature": reveals[2].signature})
    beacon = compute_beacon(
        height, [commitments[0], forged_commit, *commitments[2:]], reveals, keys, verifier
    )
    assert beacon.excluded == (1,)
    beacon = compute_beacon(height, commitments, [*reveals[:3], forged_reveal], keys, verifier)
    assert beacon.excluded == (3,)
    with pytest.raises(BeaconError):
        compute_beacon(height + 1, commitments, reveals, keys, verifier)  # other height


def test_two_commitments_from_one_validator_exclude_it(
    validators, validator_signers, verifier
) -> None:
    height = 5
    keys = validators[0].keys
    commitments = [v.commit(height) for v in validators]
    reveals = [v.reveal(height) for v in validators]
    other = digest(b"another value")
    # a second commitment, validly signed by validator 0 itself
    signature = validator_signers[0].sign(commitment_message(0, height, other), CTX_BEACON)
    second = commitments[0].model_copy(update={"commitment": other, "signature": signature})
    beacon = compute_beacon(height, [*commitments, second], reveals, keys, verifier)
    assert beacon.excluded == (0,)


def test_reveal_needs_a_commitment(validators) -> None:
    with pytest.raises(ConsensusError, match="no commitment"):
        validators[0].reveal(99)


def test_randomness_source_must_give_32_bytes(validator_signers, verifier) -> None:
    keys = keys_of(validator_signers)
    v = Validator(0, validator_signers[0], keys, lambda n: b"short", verifier=verifier)
    with pytest.raises(ConsensusError, match="32 bytes"):
        v.commit(1)


def test_validator_needs_its_registered_key(validator_signers, verifier) -> None:
    with pytest.raises(ConsensusError, match="registered key"):
        Validator(1, validator_signers[0], keys_of(validator_signers), bytes, verifier=verifier)


def test_qrng_can_feed_the_beacon(validator_signers, verifier) -> None:
    keys = keys_of(validator_signers)
    validators = [
        Validator(i, s, keys, QRNG(qubits=16, seed_simulator=100 + i).random_bytes)
        for i, s in validator_signers.items()
    ]
    assert validators[0].verifier.backend_name == validator_signers[0].backend_name
    beacon = run_beacon(validators, height=1)
    assert beacon.included == (0, 1, 2, 3)


# --------------------------------------------------------------------------- leaders


def test_leader_rotation() -> None:
    value = (6).to_bytes(8, "big") + bytes(24)  # base = 6 % 4 = 2
    beacon = Beacon(height=1, value=value, included=(0, 1, 2, 3), excluded=())
    ids = [30, 10, 40, 20]  # sorted: 10, 20, 30, 40
    assert [leader_for(beacon, ids, r) for r in range(5)] == [30, 40, 10, 20, 30]
    with pytest.raises(ConsensusError):
        leader_for(beacon, ids, -1)


# --------------------------------------------------------------------------- proposals and votes


def test_valid_proposal_gets_votes_and_a_certificate(validators, client, verifier) -> None:
    beacon = run_beacon(validators, height=1)
    leader = validators[leader_for(beacon, range(4))]
    block = leader.propose(height=1, prev_hash=PREV, round=1, transactions=transactions(client))
    assert block.header.proposer == leader.index
    check = update_signature_check(verifier, {0: client.public_key}, RUN_ID)
    votes = []
    for v in validators:
        v.validate_proposal(block, height=1, prev_hash=PREV, check_transactions=check)
        votes.append(v.vote(block))
    certificate = tuple((vote.index, vote.signature) for vote in votes[:3])
    keys = validators[0].keys
    assert check_certificate(block.hash, certificate, keys, 1, verifier=verifier) == 3
    qc = QuorumCertificate(height=1, block_hash=block.hash, signatures=certificate)
    assert check_certificate(block.hash, qc, keys, verifier=verifier) == 3


def test_only_the_leader_proposes(validators, client) -> None:
    beacon = run_beacon(validators, height=1)
    other = validators[(leader_for(beacon, range(4)) + 1) % 4]
    with pytest.raises(ConsensusError, match="does not lead"):
        other.propose(height=1, prev_hash=PREV, round=1, transactions=[])


def tampered_blocks(block: Block, client: Signer) -> dict[str, Block]:
    txs = list(block.transactions)
    update = txs[1]
    flipped = bytearray(update.signature)
    flipped[100] ^= 1
    bad_sig = txs[:1] + [update.model_copy(update={"signature": bytes(flipped)})]
    header = block.header
    altered_root = header.model_copy(update={"merkle_root": digest(b"not the root")})
    return {
        "bad_signature": make_block(
            height=header.height,
            prev_hash=header.prev_hash,
            proposer=header.proposer,
            round=header.round,
            transactions=bad_sig,
        ),
        "wrong_prev_hash": make_block(
            height=header.height,
            prev_hash=digest(b"a fork"),
            proposer=header.proposer,
            round=header.round,
            transactions=txs,
        ),
        "altered_merkle_root": Block.model_construct(
            header=altered_root, transactions=block.transactions, certificate=()
        ),
        "wrong_height": make_block(
            height=header.height + 1,
            prev_hash=header.prev_hash,
            proposer=header.proposer,
            round=header.round,
            transactions=txs,
        ),
        "wrong_proposer": make_block(
            height=header.height,
            prev_hash=header.prev_hash,
            proposer=(header.proposer + 1) % 4,
            round=header.round,
            transactions=txs,
        ),
        "invalid_header": Block.model_construct(
            header=BlockHeader.model_construct(
                height=header.height,
                prev_hash=b"short",
                merkle_root=header.merkle_root,
                proposer=header.proposer,
                round=header.round,
            ),
            transactions=block.transactions,
            certificate=(),
        ),
        "invalid_transaction": Block.model_construct(
            header=header,
            transactions=(txs[0], update.model_copy(update={"nonce": b"short"})),
            certificate=(),
        ),
    }


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("bad_signature", "fails its check"),
        ("wrong_prev_hash", "prev_hash"),
        ("altered_merkle_root", "merkle_root"),
        ("wrong_height", "height"),
        ("wrong_proposer", "proposer"),
        ("invalid_header", "malformed block header"),
        ("invalid_transaction", "transaction 1 is malformed"),
    ],
)
def test_invalid_proposals_get_no_vote(validators, client, verifier, kind, reason) -> None:
    beacon = run_beacon(validators, height=1)
    leader = validators[leader_for(beacon, range(4))]
    block = leader.propose(height=1, prev_hash=PREV, round=1, transactions=transactions(client))
    bad = tampered_blocks(block, client)[kind]
    check = update_signature_check(verifier, {0: client.public_key}, RUN_ID)
    for v in validators:
        with pytest.raises(InvalidProposal, match=reason) as info:
            v.validate_proposal(bad, height=1, prev_hash=PREV, check_transactions=check)
        assert isinstance(info.value, QflError)
        with pytest.raises(ConsensusError):  # "did not validate" (or malformed header)
            v.vote(bad)


def test_an_honest_validator_votes_once_per_height(validators, client) -> None:
    beacon = run_beacon(validators, height=1)
    v = validators[0]
    first = make_block(
        height=1,
        prev_hash=PREV,
        proposer=leader_for(beacon, range(4), 0),
        round=1,
        transactions=[],
    )
    second = make_block(
        height=1,
        prev_hash=PREV,
        proposer=leader_for(beacon, range(4), 1),
        round=1,
        transactions=[],
    )
    v.validate_proposal(first, height=1, prev_hash=PREV, attempt=0)
    v.validate_proposal(second, height=1, prev_hash=PREV, attempt=1)
    v.vote(first)
    v.vote(first)  # the same block again is fine
    with pytest.raises(ConsensusError, match="already voted"):
        v.vote(second)
    v.forget_below(2)
    with pytest.raises(ConsensusError, match="no beacon"):
        v.leader(1)


# --------------------------------------------------------------------------- certificates


def certify(block_hash: bytes, signers: dict[int, Signer], indices) -> tuple:
    return tuple((i, signers[i].sign(block_hash, CTX_BLOCK)) for i in indices)


def test_certificate_needs_a_quorum_of_distinct_valid_signatures(
    validator_signers, verifier
) -> None:
    keys = keys_of(validator_signers)
    h = digest(b"block")
    full = certify(h, validator_signers, range(4))
    assert check_certificate(h, full, keys, verifier=verifier, strict=True) == 4
    with pytest.raises(CertificateError, match="2 distinct valid"):
        check_certificate(h, full[:2], keys, 1, verifier=verifier)
    two_bad = full[:2] + tuple((i, bytes(3309)) for i in (2, 3))
    with pytest.raises(CertificateError, match="2 distinct valid"):
        check_certificate(h, two_bad, keys, verifier=verifier)
    duplicated = full[:2] + (full[0], full[1])
    with pytest.raises(CertificateError):
        check_certificate(h, duplicated, keys, verifier=verifier)
    other_block = certify(digest(b"other"), validator_signers, range(4))
    with pytest.raises(CertificateError):
        check_certificate(h, other_block, keys, verifier=verifier)
    wrong_ctx = tuple((i, validator_signers[i].sign(h, CTX_BEACON)) for i in range(4))
    with pytest.raises(CertificateError):
        check_certificate(h, wrong_ctx, keys, verifier=verifier)
    # three valid + one junk entry: a quorum, but strict (ledger) verification refuses it
    junk = full[:3] + ((3, bytes(3309)),)
    assert check_certificate(h, junk, keys, verifier=verifier) == 3
    with pytest.raises(CertificateError, match="invalid signature of validator 3"):
        check_certificate(h, junk, keys, verifier=verifier, strict=True)
    with pytest.raises(CertificateError, match="unknown validator 9"):
        check_certificate(h, full + ((9, full[0][1]),), keys, verifier=verifier, strict=True)
    qc = QuorumCertificate(height=1, block_hash=digest(b"other"), signatures=full)
    with pytest.raises(CertificateError, match="another block"):
        check_certificate(h, qc, keys, verifier=verifier)


def test_equivocation_is_detected_with_verified_evidence(validator_signers, verifier) -> None:
    keys = keys_of(validator_signers)
    a, b, c = (digest(x) for x in (b"a", b"b", b"c"))
    certs = [
        QuorumCertificate(
            height=5, block_hash=a, signatures=certify(a, validator_signers, [0, 1, 2])
        ),
        QuorumCertificate(height=5, block_hash=b, signatures=certify(b, validator_signers, [1, 3])),
        # same validators at another height: not equivocation
        QuorumCertificate(height=6, block_hash=c, signatures=certify(c, validator_signers, [0, 1])),
        # a forged entry cannot frame validator 2
        QuorumCertificate(height=5, block_hash=c, signatures=((2, bytes(3309)),)),
    ]
    evidence = detect_equivocation(certs, keys, verifier)
    assert [(e.validator, e.height) for e in evidence] == [(1, 5)]
    assert {evidence[0].first_hash, evidence[0].second_hash} == {a, b}
    check_equivocation(evidence[0], keys, verifier)
    fake = evidence[0].model_copy(update={"second_signature": evidence[0].first_signature})
    with pytest.raises(ConsensusError):
        check_equivocation(fake, keys, verifier)
    same = evidence[0].model_copy(update={"second_hash": evidence[0].first_hash})
    with pytest.raises(ConsensusError, match="same block"):
        check_equivocation(same, keys, verifier)
    assert detect_equivocation(certs[:1] + certs[2:], keys, verifier) == []


# --------------------------------------------------------------------------- the driver


def check_decision(decision, consensus: Consensus, height: int = 1) -> None:
    block = decision.block
    assert block.height == height and block.header.prev_hash == PREV
    assert block.header.proposer == decision.leader
    assert len(block.certificate) == consensus.quorum
    check_certificate(
        block.hash, block.certificate, consensus.keys, verifier=consensus.verifier, strict=True
    )


def test_run_height_all_honest(consensus, validators, client, verifier) -> None:
    check = update_signature_check(verifier, {0: client.public_key}, RUN_ID)
    txs = transactions(client)
    decision = consensus.run_height(1, PREV, txs, validators, round=1, check_transactions=check)
    check_decision(decision, consensus)
    assert decision.attempt == 0 and decision.failures == () and decision.faulty == ()
    assert decision.block.transactions == tuple(txs)
    assert decision.beacon.included == (0, 1, 2, 3)


def predicted_leader(signers, verifier, seed: int, down: int | None = None) -> int:
    """The attempt-0 leader at height 1 of `make_validators(seed)` with `down` crashed."""
    twins = [v for v in make_validators(signers, verifier, seed) if v.index != down]
    return leader_for(run_beacon(twins, height=1), range(4))


def test_a_crashed_non_leader_is_tolerated(validator_signers, verifier, client) -> None:
    consensus = Consensus(keys_of(validator_signers), verifier=verifier)
    down = (predicted_leader(validator_signers, verifier, 0) + 1) % 4
    slots: list[Validator | None] = list(make_validators(validator_signers, verifier, 0))
    slots[down] = None
    decision = consensus.run_height(1, PREV, transactions(client), slots, round=1)
    check_decision(decision, consensus)
    assert decision.beacon.excluded == (down,)
    assert decision.attempt == 0


def test_a_crashed_leader_passes_to_the_next(validator_signers, verifier, client) -> None:
    """A validator that is down from the start yet would lead (its beacon leaves it out)."""
    seed, down = next(
        (seed, k)
        for seed in range(100)
        for k in range(4)
        if predicted_leader(validator_signers, verifier, seed, down=k) == k
    )
    consensus = Consensus(keys_of(validator_signers), verifier=verifier)
    slots: list[Validator | None] = list(make_validators(validator_signers, verifier, seed))
    slots[down] = None
    decision = consensus.run_height(1, PREV, transactions(client), slots, round=1)
    check_decision(decision, consensus)
    assert decision.beacon.excluded == (down,)
    assert (decision.attempt, decision.leader) == (1, (down + 1) % 4)
    assert decision.failures[0].reason == "the leader is down"


class CrashesOnReveal(Validator):
    """Commits, then loses its connection."""

    def reveal(self, height):
        raise RuntimeError("connection lost")


class CrashesOnPropose(Validator):
    """Takes part in the beacon, then crashes when it should propose."""

    def propose(self, **kwargs):
        raise RuntimeError("out of memory")


def test_a_raising_validator_counts_as_crashed(validator_signers, verifier, client) -> None:
    keys = keys_of(validator_signers)
    validators = make_validators(validator_signers, verifier)
    source = np.random.default_rng([0, 2]).bytes
    validators[2] = CrashesOnReveal(2, validator_signers[2], keys, source, verifier=verifier)
    consensus = Consensus(keys, verifier=verifier)
    decision = consensus.run_height(1, PREV, transactions(client), validators, round=1)
    check_decision(decision, consensus)
    assert decision.faulty == (2,)
    assert decision.beacon.excluded == (2,)


def test_a_leader_crashing_at_proposal_passes_to_the_next(
    validator_signers, verifier, client
) -> None:
    keys = keys_of(validator_signers)
    leader = predicted_leader(validator_signers, verifier, 0)
    validators = make_validators(validator_signers, verifier)
    source = np.random.default_rng([0, leader]).bytes
    validators[leader] = CrashesOnPropose(
        leader, validator_signers[leader], keys, source, verifier=verifier
    )
    consensus = Consensus(keys, verifier=verifier)
    decision = consensus.run_height(1, PREV, transactions(client), validators, round=1)
    check_decision(decision, consensus)
    assert decision.beacon.excluded == ()  # it crashed after revealing
    assert (decision.attempt, decision.faulty) == (1, (leader,))
    assert "out of memory" in decision.failures[0].reason


def test_two_crashed_of_four_stops_consensus(consensus, validators, client) -> None:
    with pytest.raises(BeaconError):
        consensus.run_height(1, PREV, [], [validators[0], None, validators[2], None])


@pytest.mark.parametrize(
    "kind", ["bad_signature", "wrong_prev_hash", "altered_merkle_root", "wrong_proposer"]
)
def test_byzantine_leader_gets_no_quorum_and_the_next_leader_is_certified(
    consensus, validators, validator_signers, client, verifier, kind
) -> None:
    leader = predicted_leader(validator_signers, verifier, 0)
    check = update_signature_check(verifier, {0: client.public_key}, RUN_ID)
    txs = transactions(client)
    decision = consensus.run_height(
        1,
        PREV,
        txs,
        validators,
        round=1,
        check_transactions=check,
        tamper={leader: lambda block: tampered_blocks(block, client)[kind]},
    )
    check_decision(decision, consensus)
    assert decision.attempt == 1
    assert decision.leader == (leader + 1) % 4
    assert [f.leader for f in decision.failures] == [leader]
    assert "no quorum (0 of 3 votes)" in decision.failures[0].reason
    assert decision.block.transactions == tuple(txs)


def test_single_validator_runs_alone(backend, verifier, client) -> None:
    signer = signer_from_seed(derive_seed(MASTER, "validator", 0), backend=backend)
    keys = {0: signer.public_key}
    consensus = Consensus(keys, verifier=verifier)
    assert (consensus.f, consensus.quorum) == (0, 1)
    only = Validator(0, signer, keys, np.random.default_rng(1).bytes, verifier=verifier)
    prev = ZERO_HASH
    for height in range(3):
        txs = [] if height else transactions(client)
        decision = consensus.run_height(height, prev, txs, [only], round=height)
        assert decision.block.certificate[0][0] == 0
        prev = decision.block.hash
        assert decision.block.height == height


def test_transactions_can_depend_on_the_beacon(consensus, validators) -> None:
    seen: list[Beacon] = []

    def open_round(beacon: Beacon) -> list:
        seen.append(beacon)
        rng = np.random.default_rng(beacon_seed(beacon))
        sampled = sorted(int(c) for c in rng.choice(10, size=3, replace=False))
        plan = dict.fromkeys(sampled, "classical")
        return [RoundOpen(round=2, beacon=beacon.value, sampled=sampled, plan=plan)]

    decision = consensus.run_height(1, PREV, open_round, validators, round=2)
    assert seen == [decision.beacon]
    assert decision.block.transactions[0].beacon == decision.beacon.value


def test_driver_refuses_misplaced_validators(consensus, validators) -> None:
    with pytest.raises(ConsensusError, match="slots"):
        consensus.run_height(1, PREV, [], validators[:3])
    with pytest.raises(ConsensusError, match="holds validator"):
        consensus.run_height(1, PREV, [], list(reversed(validators)))


# --------------------------------------------------------------------------- remote validators
#
# The driver over validators reached through pending calls (as Ray actors are): each call
# returns a `Pending`, `resolve` runs a phase's pending calls together, `share` wraps a
# value the calls then receive by handle. The log records when calls are issued and run.


class Shared:
    def __init__(self, value):
        self.value = value


def unshare(value):
    return value.value if isinstance(value, Shared) else value


class Pending:
    def __init__(self, name: str, index: int, run):
        self.name, self.index, self.run = name, index, run


class Remote:
    """A `Validator` behind pending calls; answers `propose` with the header alone when its
    block holds exactly the transactions it was given (as actors/validator.py does)."""

    def __init__(self, validator: Validator, log: list):
        self.validator, self.index, self.log = validator, validator.index, log

    def _pending(self, name, run):
        self.log.append(("issue", name, self.index))
        return Pending(name, self.index, run)

    def commit(self, height):
        return self._pending("commit", lambda: self.validator.commit(height))

    def reveal(self, height):
        return self._pending("reveal", lambda: self.validator.reveal(height))

    def reveal_and_commit(self, height):
        return self._pending("reveal", lambda: self.validator.reveal_and_commit(height))

    def propose(self, *, transactions, **kwargs):
        given = unshare(transactions)

        def run():
            block = self.validator.propose(transactions=given, **kwargs)
            same = len(block.transactions) == len(given) and all(
                a is b for a, b in zip(block.transactions, given, strict=True)
            )
            return block.header if same else block

        return self._pending("propose", run)

    def endorse(self, block, *, transactions, expected, check_transactions, **kwargs):
        assert check_transactions is None  # remote validators use their own
        return self._pending(
            "endorse",
            lambda: self.validator.endorse(
                unshare(block),
                transactions=unshare(transactions),
                expected=unshare(expected),
                **kwargs,
            ),
        )


class Hooks:
    """`resolve` and `share` for `Consensus`; `fail[(name, index)]` replaces a call's result
    by an exception (a crash or a timeout, as the actor layer reports them)."""

    def __init__(self, log: list, fail: dict | None = None):
        self.log, self.fail, self.shared = log, fail or {}, []

    def resolve(self, pending):
        out = []
        for p in pending:
            self.log.append(("run", p.name, p.index))
            if (p.name, p.index) in self.fail:
                out.append(self.fail[(p.name, p.index)])
                continue
            try:
                out.append(p.run())
            except Exception as exc:
                out.append(exc)
        return out

    def share(self, value):
        self.shared.append(value)
        return Shared(value)


def remote_setup(signers, verifier, client, *, fail=None, tamper=None, seed=0):
    keys = keys_of(signers)
    check = update_signature_check(verifier, {0: client.public_key}, RUN_ID)
    log: list = []
    hooks = Hooks(log, fail)
    validators = [
        Validator(
            i,
            s,
            keys,
            np.random.default_rng([seed, i]).bytes,
            verifier=Verifier(verifier.backend_name),  # each its own, as in an actor
            check_transactions=check,
            tamper=(tamper or {}).get(i),
        )
        for i, s in sorted(signers.items())
    ]
    consensus = Consensus(keys, verifier=verifier, resolve=hooks.resolve, share=hooks.share)
    return consensus, [Remote(v, log) for v in validators], hooks, log


def test_remote_phases_are_issued_to_all_then_resolved_and_every_vote_counts(
    validator_signers, verifier, client
) -> None:
    consensus, remotes, hooks, log = remote_setup(validator_signers, verifier, client)
    txs = transactions(client)
    decision = consensus.run_height(1, PREV, txs, remotes, round=1)
    block = decision.block
    assert [i for i, _ in block.certificate] == [0, 1, 2, 3]  # no early stop: all four
    check_certificate(block.hash, block.certificate, consensus.keys, verifier=verifier)
    assert (decision.attempt, decision.faulty, decision.failures) == (0, (), ())
    assert block.transactions == tuple(txs)
    assert all(a is b for a, b in zip(block.transactions, txs, strict=True))  # the driver's own
    for phase in ("commit", "reveal", "endorse"):
        events = [(kind, i) for kind, name, i in log if name == phase]
        assert events == [("issue", i) for i in range(4)] + [("run", i) for i in range(4)]
    # the transactions were published once; the honest leader's header came back alone
    assert [type(v) for v in hooks.shared] == [tuple]
    assert hooks.shared[0] == tuple(txs)


def test_remote_crash_and_timeout_count_as_crashed(validator_signers, verifier, client) -> None:
    leader = predicted_leader(validator_signers, verifier, 0)
    other = (leader + 1) % 4
    fail = {("endorse", other): RuntimeError("actor died")}
    consensus, remotes, _, _ = remote_setup(validator_signers, verifier, client, fail=fail)
    decision = consensus.run_height(1, PREV, transactions(client), remotes, round=1)
    assert decision.faulty == (other,)
    assert [i for i, _ in decision.block.certificate] == sorted(set(range(4)) - {other})
    timeout = {("commit", other): TimeoutError("no answer within 0.1 s")}
    consensus, remotes, _, _ = remote_setup(validator_signers, verifier, client, fail=timeout)
    decision = consensus.run_height(1, PREV, transactions(client), remotes, round=1)
    assert decision.faulty == (other,) and decision.beacon.excluded == (other,)
    assert other not in dict(decision.block.certificate)


def test_remote_two_crashed_of_four_stop_consensus(validator_signers, verifier, client) -> None:
    fail = {("reveal", 1): RuntimeError("died"), ("reveal", 2): TimeoutError("hung")}
    consensus, remotes, _, _ = remote_setup(validator_signers, verifier, client, fail=fail)
    with pytest.raises(BeaconError, match=r"excluded: \[1, 2\]"):
        consensus.run_height(1, PREV, transactions(client), remotes, round=1)


@pytest.mark.parametrize(
    "kind", ["bad_signature", "wrong_prev_hash", "altered_merkle_root", "wrong_proposer"]
)
def test_remote_byzantine_leader_is_refused_not_crashed(
    validator_signers, verifier, client, kind
) -> None:
    leader = predicted_leader(validator_signers, verifier, 0)
    tamper = {leader: lambda block: tampered_blocks(block, client)[kind]}
    consensus, remotes, hooks, _ = remote_setup(validator_signers, verifier, client, tamper=tamper)
    txs = transactions(client)
    decision = consensus.run_height(1, PREV, txs, remotes, round=1)
    assert (decision.attempt, decision.leader) == (1, (leader + 1) % 4)
    assert decision.faulty == ()  # refusals (InvalidProposal), not crashes
    assert "no quorum (0 of 3 votes)" in decision.failures[0].reason
    assert decision.block.transactions == tuple(txs)
    # a block over other transaction objects is published whole (once); one over the
    # given ones comes back and goes out as its header
    whole = [tuple, Block] if kind == "bad_signature" else [tuple]
    assert [type(v) for v in hooks.shared] == whole


def test_a_leader_that_changes_the_submitted_transactions_gets_no_vote(
    validators, consensus, client
) -> None:
    """A valid block over other transactions (an update dropped) is refused as well."""
    leader = predicted_leader_of(validators)
    txs = transactions(client)

    def drop_the_update(block: Block) -> Block:
        h = block.header
        return make_block(
            height=h.height,
            prev_hash=h.prev_hash,
            proposer=h.proposer,
            round=h.round,
            transactions=block.transactions[:1],
        )

    decision = consensus.run_height(
        1, PREV, txs, validators, round=1, tamper={leader: drop_the_update}
    )
    assert decision.attempt == 1 and decision.block.transactions == tuple(txs)
    assert "submitted" in decision.failures[0].reason


def predicted_leader_of(validators) -> int:
    twins = make_validators(
        {v.index: v._signer for v in validators}, validators[0].verifier, seed=0
    )
    return leader_for(run_beacon(twins, height=1), range(4))


def _counting_validators(validator_signers, verifier, client, seen, prechecked=None):
    """Validators whose own check (the update signatures) appends to `seen` how many
    transactions it was given; `prechecked`: one table for all of them."""
    inner = update_signature_check(verifier, {0: client.public_key}, RUN_ID)

    def counting(transactions):
        seen.append(len(transactions))
        inner(transactions)

    keys = keys_of(validator_signers)
    return [
        Validator(
            i,
            s,
            keys,
            np.random.default_rng([0, i]).bytes,
            verifier=verifier,
            check_transactions=counting,
            prechecked=prechecked,
        )
        for i, s in sorted(validator_signers.items())
    ]


def test_prechecked_transactions_skip_the_check_and_a_bad_one_is_not_remembered(
    validator_signers, verifier, client
) -> None:
    keys = keys_of(validator_signers)
    seen: list[int] = []
    validators = _counting_validators(validator_signers, verifier, client, seen)
    txs = transactions(client)
    forged = txs[1].model_copy(update={"signature": bytes(3309)})
    for v in validators:
        assert v.precheck([*txs, forged]) == 2  # the forgery fails and is not remembered
    seen.clear()
    decision = Consensus(keys, verifier=verifier).run_height(1, PREV, txs, validators, round=1)
    assert seen == []  # every transaction of the block was prechecked
    voters = [i for i, _ in decision.block.certificate]
    assert all(not validators[i]._prechecked for i in voters)  # dropped once voted
    # a block holding the forgery is still checked, and refused
    beacon_validators = make_validators(validator_signers, verifier, seed=1)
    v = validators[0]
    assert v.precheck([forged]) == 0
    seen.clear()
    other = run_beacon([v, *beacon_validators[1:]], height=2)
    leader = leader_for(other, range(4))
    block = make_block(height=2, prev_hash=PREV, proposer=leader, round=1, transactions=[forged])
    with pytest.raises(InvalidProposal, match="fails its check"):
        v.validate_proposal(block, height=2, prev_hash=PREV)
    assert seen == [1]


def test_validators_sharing_a_precheck_table_check_each_transaction_once(
    validator_signers, verifier, client
) -> None:
    """In one process, what one validator prechecked serves all: nobody re-checks it at
    the block, the table forgets nothing until its owner says so, and a tampered block
    (other bytes) is still checked and refused."""
    keys = keys_of(validator_signers)
    seen: list[int] = []
    table: dict = {}
    validators = _counting_validators(validator_signers, verifier, client, seen, table)
    txs = transactions(client)
    assert validators[0].precheck(txs) == 2 and seen == [1, 1]
    assert set(table) == {encode_tx(tx) for tx in txs}
    seen.clear()
    decision = Consensus(keys, verifier=verifier).run_height(1, PREV, txs, validators, round=1)
    assert len(decision.block.certificate) >= 3
    assert seen == []  # no voter decoded or checked any of them again
    assert len(table) == 2  # shared: the owner forgets them, not the voters
    forget_transactions(table, decision.block.transactions)
    assert table == {}
    # the same transactions with a forged signature are other bytes: checked, refused
    assert validators[0].precheck(txs) == 2
    forged = txs[1].model_copy(update={"signature": bytes(3309)})
    seen.clear()
    v = validators[2]  # not the one that prechecked: the table is shared
    others = make_validators(validator_signers, verifier, seed=1)
    other = run_beacon([*others[:2], v, others[3]], height=2)
    block = make_block(
        height=2,
        prev_hash=PREV,
        proposer=leader_for(other, range(4)),
        round=1,
        transactions=[txs[0], forged],
    )
    with pytest.raises(InvalidProposal, match="fails its check"):
        v.validate_proposal(block, height=2, prev_hash=PREV)
    assert seen == [1]  # only the forgery: the other was in the shared table


def test_the_next_commitments_come_with_the_reveals(validator_signers, verifier, client) -> None:
    """Height 2 needs no commit phase: every validator committed to it with its height-1
    reveal; one that failed then is asked to commit at height 2 (and only it)."""
    fail = {("reveal", 3): RuntimeError("lost the connection")}
    consensus, remotes, hooks, log = remote_setup(validator_signers, verifier, client, fail=fail)
    first = consensus.run_height(1, PREV, transactions(client), remotes, round=1)
    assert first.faulty == (3,) and first.beacon.excluded == (3,)
    log.clear()
    hooks.fail.clear()
    second = consensus.run_height(2, first.block.hash, [], remotes, round=2)
    commits = [(kind, i) for kind, name, i in log if name == "commit"]
    assert commits == [("issue", 3), ("run", 3)]
    assert second.beacon.included == (0, 1, 2, 3) and second.faulty == ()
