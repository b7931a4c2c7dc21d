"""The update validation rules: each rule, their order, nonce burning, and a mixed round."""

from __future__ import annotations

from typing import get_args

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from federated.aggregate import fedavg
from ledger.contract import (
    RULE_ORDER,
    Contract,
    ContractError,
    UpdateRejected,
    burned_nonces,
    update_signature_check,
)
from ledger.crypto import CTX_UPDATE, Signer, Verifier, liboqs_library, signer_from_seed
from ledger.encoding import weights_digest
from ledger.keys import derive_seed, master_secret_from_run_seed
from ledger.records import (
    Rejection,
    RejectionRule,
    RoundOpen,
    UnsignedUpdate,
    Update,
    update_signing_payload,
)
from qfl.errors import QflError

RUN_ID = "run-contract"
P = 12
BOUND = 10.0
N_CLIENTS = 10
SAMPLED = tuple(range(9))  # client 9 is registered but never sampled
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
def signers(backend: str) -> dict[int, Signer]:
    master = master_secret_from_run_seed(11)
    return {
        i: signer_from_seed(derive_seed(master, "client", i), backend=backend)
        for i in range(N_CLIENTS)
    }


@pytest.fixture(scope="module")
def verifier(backend: str) -> Verifier:
    return Verifier(backend)


@pytest.fixture
def contract(signers, verifier) -> Contract:
    registry = {i: s.public_key for i, s in signers.items()}
    c = Contract(RUN_ID, registry, num_params=P, norm_bound=BOUND, verifier=verifier)
    c.open_round(3, SAMPLED)
    return c


def nonce(client: int, rnd: int, salt: int = 0) -> bytes:
    return bytes([client, rnd, salt]) + bytes(13)


def delta_of(client: int, scale: float = 0.1) -> np.ndarray:
    return (np.random.default_rng(client).standard_normal(P) * scale).astype(np.float32)


def signed(
    signer: Signer,
    client: int,
    delta: np.ndarray,
    *,
    rnd: int = 3,
    salt: int = 0,
    num_examples: int = 50,
) -> Update:
    unsigned = UnsignedUpdate(
        client_id=client,
        round=rnd,
        nonce=nonce(client, rnd, salt),
        delta_digest=weights_digest(delta),
        num_examples=num_examples,
        path="classical",
        metrics={"loss": 500_000},
    )
    return unsigned.signed(signer.sign(update_signing_payload(unsigned, RUN_ID), CTX_UPDATE))


def honest(signers, client: int, **kw) -> tuple[Update, np.ndarray]:
    delta = delta_of(client)
    return signed(signers[client], client, delta, num_examples=40 + client, **kw), delta


def rule_of(contract: Contract, update: Update, delta: np.ndarray) -> str:
    with pytest.raises(UpdateRejected) as info:
        contract.check(update, delta)
    assert isinstance(info.value, QflError)
    return info.value.rule


# --------------------------------------------------------------------------- the mixed round


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_mixed_round_accepts_exactly_the_honest_updates(contract, signers, workers) -> None:
    """The same verdicts in the same order however many threads authenticate."""
    honest_batch = [honest(signers, c) for c in (0, 1, 2)]
    forged_delta = delta_of(3)
    forged = signed(signers[8], 3, forged_delta)  # claims client 3, signed by client 8's key
    stale_delta = delta_of(4)
    stale = signed(signers[4], 4, stale_delta, rnd=2)
    nan_delta = delta_of(5).copy()
    nan_delta[3] = np.nan
    nan = signed(signers[5], 5, nan_delta)
    big_delta = np.full(P, 5.0, dtype=np.float32)  # norm sqrt(12) * 5 > 10
    oversized = signed(signers[6], 6, big_delta)
    wide_delta = delta_of(7, 0.01).repeat(2)
    wide = signed(signers[7], 7, wide_delta)
    stranger = (signed(signers[9], 9, delta_of(9)), delta_of(9))
    swapped = (honest(signers, 8)[0], delta_of(1))  # client 8's signed record, another delta
    batch = [
        swapped,
        (forged, forged_delta),
        honest_batch[0],
        (stale, stale_delta),
        honest_batch[1],
        honest_batch[0],  # replay of client 0's update
        (nan, nan_delta),
        (oversized, big_delta),
        honest_batch[2],
        (wide, wide_delta),
        stranger,
    ]
    accepted, rejections = contract.admit(batch, workers=workers)

    assert [u.client_id for u, _ in accepted] == [0, 1, 2]
    assert all(u is h for (u, _), (h, _) in zip(accepted, honest_batch, strict=True))
    assert [(r.client_id, r.rule) for r in rejections] == [
        (8, "bad_signature"),
        (3, "bad_signature"),
        (4, "wrong_round"),
        (0, "replayed_nonce"),
        (5, "non_finite"),
        (6, "norm_bound"),
        (7, "shape_mismatch"),
        (9, "not_sampled"),
    ]
    assert all(isinstance(r, Rejection) and r.round == 3 and r.detail for r in rejections)

    got = fedavg([d for _, d in accepted], [u.num_examples for u, _ in accepted])
    honest_deltas = [delta_of(c) for c in (0, 1, 2)]
    expected = fedavg(honest_deltas, [40, 41, 42])
    np.testing.assert_array_equal(got, expected)


def test_forged_update_with_an_honest_nonce_does_not_block_the_honest_one(contract, signers):
    update, delta = honest(signers, 2)
    forged = update.model_copy(update={"signature": signers[5].sign(b"x" * 32, CTX_UPDATE)})
    accepted, rejections = contract.admit([(forged, delta), (update, delta)])
    assert [r.rule for r in rejections] == ["bad_signature"]
    assert [u for u, _ in accepted] == [update]
    assert contract.is_burned(2, update.nonce)


def test_substituted_delta_is_a_bad_signature_and_burns_nothing(contract, signers) -> None:
    update, delta = honest(signers, 1)
    tampered = delta.copy()
    tampered[0] += 1.0
    with pytest.raises(UpdateRejected, match="digest mismatch") as info:
        contract.check(update, tampered)
    assert info.value.rule == "bad_signature"
    accepted, rejections = contract.admit([(update, tampered), (update, delta)])
    assert [r.rule for r in rejections] == ["bad_signature"]
    assert len(accepted) == 1


# --------------------------------------------------------------------------- each rule


def test_unregistered(signers, verifier) -> None:
    registry = {i: signers[i].public_key for i in range(3)}
    contract = Contract(RUN_ID, registry, num_params=P, norm_bound=None, verifier=verifier)
    contract.open_round(3, [0, 1, 2, 5])
    update, delta = honest(signers, 5)
    assert rule_of(contract, update, delta) == "unregistered"


def test_signature_is_bound_to_the_run(signers, verifier) -> None:
    registry = {i: s.public_key for i, s in signers.items()}
    other = Contract("another-run", registry, num_params=P, norm_bound=None, verifier=verifier)
    other.open_round(3, SAMPLED)
    update, delta = honest(signers, 0)
    assert rule_of(other, update, delta) == "bad_signature"


def test_altered_signed_field_is_a_bad_signature(contract, signers) -> None:
    update, delta = honest(signers, 0)
    inflated = update.model_copy(update={"num_examples": 10_000})
    assert rule_of(contract, inflated, delta) == "bad_signature"


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite(contract, signers, bad: float) -> None:
    delta = delta_of(0)
    delta[-1] = bad
    assert rule_of(contract, signed(signers[0], 0, delta), delta) == "non_finite"


def test_norm_bound_is_inclusive_and_optional(contract, signers, verifier) -> None:
    delta = np.zeros(P, dtype=np.float32)
    delta[0] = BOUND  # exactly on the bound
    contract.check(signed(signers[0], 0, delta), delta)
    delta[0] = np.nextafter(np.float32(BOUND), np.float32(np.inf))
    assert rule_of(contract, signed(signers[0], 0, delta), delta) == "norm_bound"
    registry = {i: s.public_key for i, s in signers.items()}
    unbounded = Contract(RUN_ID, registry, num_params=P, norm_bound=None, verifier=verifier)
    unbounded.open_round(3, SAMPLED)
    huge = np.full(P, 1e30, dtype=np.float32)
    unbounded.check(signed(signers[0], 0, huge), huge)


@pytest.mark.parametrize("shape", [(P - 1,), (P, 1), (1, P), ()])
def test_shape_mismatch(contract, signers, shape) -> None:
    delta = np.zeros(shape, dtype=np.float32)
    assert rule_of(contract, signed(signers[0], 0, delta), delta) == "shape_mismatch"


def test_non_numeric_delta_is_refused(contract, signers) -> None:
    update, _ = honest(signers, 0)
    assert rule_of(contract, update, np.array(["a"] * P)) == "bad_signature"


# --------------------------------------------------------------------------- order and nonces


def test_rule_order_lists_every_rejection_rule() -> None:
    assert sorted(RULE_ORDER) == sorted(get_args(RejectionRule))
    assert len(set(RULE_ORDER)) == len(RULE_ORDER)


def test_first_failing_rule_wins(contract, signers) -> None:
    nan = np.full(P, np.nan, dtype=np.float32)
    forged_nan = signed(signers[1], 0, nan)  # wrong key AND NaN: authentication comes first
    assert rule_of(contract, forged_nan, nan) == "bad_signature"
    stale_forged = signed(signers[1], 0, nan, rnd=1)  # wrong round AND wrong key
    assert rule_of(contract, stale_forged, nan) == "wrong_round"
    unsampled_stale = signed(signers[9], 9, nan, rnd=1)
    assert rule_of(contract, unsampled_stale, nan) == "not_sampled"
    assert RULE_ORDER.index("replayed_nonce") < RULE_ORDER.index("bad_signature")
    assert RULE_ORDER.index("bad_signature") < RULE_ORDER.index("shape_mismatch")


def test_check_changes_nothing_and_admit_burns(contract, signers) -> None:
    update, delta = honest(signers, 0)
    contract.check(update, delta)
    contract.check(update, delta)  # check alone never burns
    accepted, _ = contract.admit([(update, delta)])
    assert len(accepted) == 1
    assert rule_of(contract, update, delta) == "replayed_nonce"


def test_content_rejection_burns_the_nonce(contract, signers) -> None:
    delta = np.full(P, np.nan, dtype=np.float32)
    update = signed(signers[4], 4, delta)
    _, first = contract.admit([(update, delta)])
    _, second = contract.admit([(update, delta)])
    assert [r.rule for r in first + second] == ["non_finite", "replayed_nonce"]
    fixed, fixed_delta = honest(signers, 4, salt=1)  # a new nonce is accepted
    assert len(contract.admit([(fixed, fixed_delta)])[0]) == 1


def test_one_update_per_client_and_round(contract, signers) -> None:
    first, delta = honest(signers, 0)
    second, delta2 = honest(signers, 0, salt=1)
    accepted, rejections = contract.admit([(first, delta), (second, delta2)])
    assert [u for u, _ in accepted] == [first]
    assert [r.rule for r in rejections] == ["replayed_nonce"]
    assert "second update" in rejections[0].detail


def test_replays_are_refused_across_rounds(contract, signers) -> None:
    update, delta = honest(signers, 0)
    assert len(contract.admit([(update, delta)])[0]) == 1
    contract.open_round(4, SAMPLED)
    assert rule_of(contract, update, delta) == "wrong_round"
    # the client re-signs the same nonce for round 4 (same (client, nonce) pair)
    same_nonce = UnsignedUpdate(**{**update.unsigned().model_dump(), "round": 4})
    resigned = same_nonce.signed(
        signers[0].sign(update_signing_payload(same_nonce, RUN_ID), CTX_UPDATE)
    )
    assert rule_of(contract, resigned, delta) == "replayed_nonce"
    # ...while the slot of the client in the new round is free again
    fresh, fresh_delta = honest(signers, 0, rnd=4, salt=9)
    assert len(contract.admit([(fresh, fresh_delta)])[0]) == 1


def test_burned_nonces_restore_on_resume(signers, verifier) -> None:
    update, delta = honest(signers, 0)
    registry = {i: s.public_key for i, s in signers.items()}
    resumed = Contract(
        RUN_ID,
        registry,
        num_params=P,
        norm_bound=None,
        verifier=verifier,
        burned=[(0, update.nonce)],
    )
    resumed.open_round(3, SAMPLED)
    assert rule_of(resumed, update, delta) == "replayed_nonce"


def test_burned_nonces_from_recorded_transactions(contract, signers, verifier) -> None:
    good, good_delta = honest(signers, 0)
    nan = np.full(P, np.nan, dtype=np.float32)
    bad = signed(signers[1], 1, nan)
    forged = signed(signers[3], 2, delta_of(2))
    accepted, rejections = contract.admit([(good, good_delta), (bad, nan), (forged, delta_of(2))])
    recorded = [u for u, _ in accepted] + rejections
    assert burned_nonces(recorded) == {(0, good.nonce), (1, bad.nonce)}  # not the forgery's
    registry = {i: s.public_key for i, s in signers.items()}
    resumed = Contract(
        RUN_ID,
        registry,
        num_params=P,
        norm_bound=BOUND,
        verifier=verifier,
        burned=burned_nonces(recorded),
    )
    resumed.open_round(3, SAMPLED)
    assert rule_of(resumed, good, good_delta) == "replayed_nonce"
    assert rule_of(resumed, bad, nan) == "replayed_nonce"
    honest2, delta2 = honest(signers, 2)
    resumed.check(honest2, delta2)


# --------------------------------------------------------------------------- misuse


def test_misuse_raises(signers, verifier) -> None:
    registry = {0: signers[0].public_key}
    contract = Contract(RUN_ID, registry, num_params=P, norm_bound=1.0, verifier=verifier)
    update, delta = honest(signers, 0)
    with pytest.raises(ContractError, match="no round is open"):
        contract.check(update, delta)
    contract.open_round(2, [0])
    with pytest.raises(ContractError, match="does not follow"):
        contract.open_round(2, [0])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ContractError):
            Contract(RUN_ID, registry, num_params=P, norm_bound=bad, verifier=verifier)
    with pytest.raises(ContractError):
        Contract(RUN_ID, registry, num_params=0, norm_bound=None, verifier=verifier)
    with pytest.raises(ContractError):
        Contract("", registry, num_params=P, norm_bound=None, verifier=verifier)
    with pytest.raises(ContractError, match="expected an Update"):
        contract.check(RoundOpen(round=2, beacon=b"b", sampled=[0], plan={0: "classical"}), delta)


def test_update_signature_check_for_consensus(contract, signers, verifier) -> None:
    registry = {i: s.public_key for i, s in signers.items()}
    check = update_signature_check(verifier, registry, RUN_ID)
    good, _ = honest(signers, 0)
    check([RoundOpen(round=3, beacon=b"b", sampled=[0], plan={0: "quantum"}), good])
    forged = good.model_copy(update={"signature": bytes(len(good.signature))})
    with pytest.raises(UpdateRejected) as info:
        check([good, forged])
    assert info.value.rule == "bad_signature"


# --------------------------------------------------------------------------- property


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_order_accepts_one_honest_update_per_client(signers, verifier, data) -> None:
    registry = {i: s.public_key for i, s in signers.items()}
    contract = Contract(RUN_ID, registry, num_params=P, norm_bound=BOUND, verifier=verifier)
    contract.open_round(3, SAMPLED)
    good = [honest(signers, c) for c in (0, 1, 2)]
    nan = np.full(P, np.nan, dtype=np.float32)
    forged = good[1][0].model_copy(update={"signature": signers[7].sign(b"y", CTX_UPDATE)})
    bad = [(forged, good[1][1]), (signed(signers[3], 3, nan), nan), good[0], good[2]]
    batch = data.draw(st.permutations(good + bad))
    accepted, rejections = contract.admit(batch)
    assert sorted(u.client_id for u, _ in accepted) == [0, 1, 2]
    assert {u.signature for u, _ in accepted} == {u.signature for u, _ in good}
    assert len(rejections) == len(bad)
