"""Tests for federated.secagg: ML-KEM keys, fixed point, masking, dropout recovery, aborts."""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from federated import secagg
from federated.secagg import (
    Roster,
    SecAggAborted,
    SecAggClient,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    UnmaskResponse,
    check_rule_compatible,
    check_secagg_config,
    decode,
    encode,
    kem_public_key,
    kem_seed,
    round_secret,
    threshold_count,
)
from ledger.crypto import SignatureError, Verifier, signer_from_seed
from ledger.keys import derive_seed
from qfl.errors import ConfigError

MASTER = bytes(range(100, 132))
IDS = (2, 3, 5, 8, 13, 21, 34, 55)  # not 0..n-1: ids are global client indices
SCALE = 2.0**16
P = 2_000


@dataclass
class Keys:
    kem: dict[int, bytes] = field(default_factory=dict)
    signers: dict = field(default_factory=dict)

    def roster(self, ids=IDS, round_=3, threshold=5) -> Roster:
        return Roster(
            round=round_,
            threshold=threshold,
            kem_keys={k: self.kem[k] for k in ids},
            signing_keys={k: self.signers[k].public_key for k in ids},
        )


@pytest.fixture(scope="module")
def keys() -> Keys:
    out = Keys()
    for k in IDS:
        out.kem[k] = kem_public_key(MASTER, k)
        out.signers[k] = signer_from_seed(derive_seed(MASTER, "client", k))
    return out


def updates(ids=IDS, seed=0, scale=1.0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.normal(size=P)).astype(np.float32) for k in ids}


def make_clients(keys: Keys, roster: Roster) -> dict[int, SecAggClient]:
    return {
        k: SecAggClient(
            k,
            roster,
            kem_seed=kem_seed(MASTER, k),
            signer=keys.signers[k],
            secret=round_secret(MASTER, k, roster.round),
            scale=SCALE,
        )
        for k in roster.participants
    }


def run_round(
    keys: Keys,
    xs: dict[int, np.ndarray],
    *,
    threshold: int = 5,
    weights: dict[int, float] | None = None,
    skip_share: tuple[int, ...] = (),
    skip_mask: tuple[int, ...] = (),
    skip_unmask: tuple[int, ...] = (),
):
    """One protocol run; clients in skip_* vanish before that step. Returns (result, clients)."""
    roster = keys.roster(threshold=threshold)
    clients = make_clients(keys, roster)
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([c.key_exchange() for c in clients.values()])
    bundles = [clients[k].share_keys(exchanges) for k in IDS if k not in skip_share]
    deliveries = server.route_shares(bundles)
    weights = weights or {k: 1.0 for k in IDS}
    masked = [
        clients[k].mask(deliveries[k], xs[k], weights[k]) for k in deliveries if k not in skip_mask
    ]
    request = server.collect_masked(masked)
    responses = [clients[k].unmask(request) for k in request.survivors if k not in skip_unmask]
    return server.finish(responses), clients


def fixed_sum(xs: dict[int, np.ndarray], ids, weights=None) -> np.ndarray:
    total = np.zeros(P, dtype=np.uint32)
    for k in ids:
        w = 1.0 if weights is None else weights[k]
        total += encode(xs[k].astype(np.float64) * w, SCALE, len(IDS))
    return total


# --------------------------------------------------------------------------- keys


def test_kem_keys_are_deterministic_distinct_and_fips_sized():
    a, b = kem_public_key(MASTER, 7), kem_public_key(MASTER, 8)
    assert a == kem_public_key(MASTER, 7)
    assert len(a) == secagg.KEM_PUBLIC_KEY_BYTES == 1184
    assert a != b and a != kem_public_key(bytes(32), 7)
    seed = kem_seed(MASTER, 7)
    assert len(seed) == 64
    assert seed[:32] != derive_seed(MASTER, "client", 7)  # not the ML-DSA seed
    with pytest.raises(ValueError, match="master secret"):
        kem_seed(b"short", 1)
    with pytest.raises(ValueError, match="client id"):
        kem_seed(MASTER, -1)


def test_ml_kem_cross_checks_with_kyber_py():
    kyber = pytest.importorskip("kyber_py.ml_kem")
    seed = kem_seed(MASTER, 4)
    ek, dk = kyber.ML_KEM_768.key_derive(seed)  # FIPS 203 KeyGen_internal(d, z)
    assert ek == kem_public_key(MASTER, 4)
    private = secagg.kem_private_key(seed)
    shared, ciphertext = kyber.ML_KEM_768.encaps(ek)
    assert private.decapsulate(ciphertext) == shared
    shared2, ciphertext2 = private.public_key().encapsulate()
    assert len(ciphertext2) == secagg.KEM_CIPHERTEXT_BYTES
    assert kyber.ML_KEM_768.decaps(dk, ciphertext2) == shared2


def test_round_secrets_differ_by_client_and_round():
    values = {round_secret(MASTER, k, t) for k in (1, 2) for t in (0, 1)}
    assert len(values) == 4
    assert round_secret(MASTER, 1, 0) == round_secret(MASTER, 1, 0)


# --------------------------------------------------------------------------- fixed point


def test_encode_decode_round_trip_and_wraps_signed():
    x = np.array([0.0, 1.5, -1.5, 1e-6, -3000.25, 2.0**-16])
    q = encode(x, SCALE, summands=1)
    assert q.dtype == np.uint32
    assert q[2] == 2**32 - round(1.5 * SCALE)  # two's complement
    np.testing.assert_allclose(decode(q, SCALE), x, atol=0.5 / SCALE)


def test_sum_of_encodings_decodes_to_the_sum():
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(10, 1000)) * 100
    total = np.zeros(1000, dtype=np.uint32)
    for x in xs:
        total += encode(x, SCALE, 10)
    exact = np.rint(xs * SCALE).sum(axis=0) / SCALE
    np.testing.assert_array_equal(decode(total, SCALE), exact)


def test_encode_refuses_values_that_could_overflow_the_sum():
    limit = 2.0**31 / 4 / SCALE
    encode(np.array([limit * 0.99]), SCALE, summands=4)
    with pytest.raises(SecAggError, match="overflow"):
        encode(np.array([-limit]), SCALE, summands=4)
    with pytest.raises(SecAggError, match="non-finite"):
        encode(np.array([np.nan]), SCALE, summands=1)


# --------------------------------------------------------------------------- protocol


def test_unmasked_sum_equals_plain_fixed_point_sum_exactly(keys):
    xs = updates()
    result, _ = run_round(keys, xs)
    assert result.included == IDS and result.dropped == ()
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, IDS))
    plain = sum(xs[k].astype(np.float64) for k in IDS)
    np.testing.assert_allclose(result.total, plain, atol=len(IDS) * 0.5 / SCALE)
    assert result.weight == len(IDS)


def test_masked_input_is_indistinguishable_from_uniform(keys):
    """y = x + masks for x = 0 and for a large constant x: both uniform over Z_2^32."""
    roster = keys.roster()
    clients = make_clients(keys, roster)
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([c.key_exchange() for c in clients.values()])
    deliveries = server.route_shares([clients[k].share_keys(exchanges) for k in IDS])
    size = 200_000
    outputs = []
    for k, value in ((IDS[0], 0.0), (IDS[1], 1000.0)):
        y = clients[k].mask(deliveries[k], np.full(size, value, dtype=np.float32)).masked
        outputs.append(y)
        top = np.bincount(y >> np.uint32(24), minlength=256)  # top byte
        low = np.bincount(y & np.uint32(0xFF), minlength=256)  # low byte
        assert stats.chisquare(top).pvalue > 1e-6
        assert stats.chisquare(low).pvalue > 1e-6
        u = y.astype(np.float64) / 2.0**32
        assert stats.kstest(u, "uniform").pvalue > 1e-6
    a, b = (o.astype(np.float64) for o in outputs)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.02


def test_weights_are_public_and_scale_before_masking(keys):
    xs = updates(seed=4)
    weights = {k: (i + 1) / 36 for i, k in enumerate(IDS)}
    result, _ = run_round(keys, xs, weights=weights)
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, IDS, weights))
    expected = sum(weights[k] * xs[k].astype(np.float64) for k in IDS) / sum(weights.values())
    np.testing.assert_allclose(result.mean, expected, atol=1e-4)
    assert result.weight == pytest.approx(1.0)


def test_dropouts_before_masking_are_recovered_exactly(keys):
    xs = updates(seed=1)
    gone = (3, 21, 55)  # n - t = 3 clients vanish after sharing their keys
    result, _ = run_round(keys, xs, skip_mask=gone)
    survivors = tuple(k for k in IDS if k not in gone)
    assert result.included == survivors and result.dropped == gone
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, survivors))


def test_dropouts_after_masking_keep_their_inputs(keys):
    xs = updates(seed=2)
    gone = (2, 8, 34)  # masked inputs arrived, then they vanished
    result, _ = run_round(keys, xs, skip_unmask=gone)
    assert result.included == IDS
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, IDS))


def test_mixed_dropouts_at_every_step(keys):
    xs = updates(seed=3)
    result, _ = run_round(keys, xs, threshold=4, skip_share=(5,), skip_mask=(13,), skip_unmask=(2,))
    included = tuple(k for k in IDS if k not in (5, 13))
    assert result.included == included and result.dropped == (13,)
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, included))


def test_too_few_masked_inputs_abort_cleanly(keys):
    with pytest.raises(SecAggAborted) as info:
        run_round(keys, updates(), skip_mask=(2, 3, 5, 8))
    failure = info.value.failure
    assert (failure.stage, failure.available, failure.threshold, failure.round) == ("mask", 4, 5, 3)


def test_too_few_unmask_answers_abort_cleanly(keys):
    with pytest.raises(SecAggAborted) as info:
        run_round(keys, updates(), skip_unmask=(2, 3, 5, 8))
    assert info.value.failure.stage == "unmask"
    assert info.value.failure.available == 4


def test_too_few_key_exchanges_abort(keys):
    roster = keys.roster()
    clients = make_clients(keys, roster)
    server = SecAggServer(roster, scale=SCALE)
    with pytest.raises(SecAggAborted, match="key_exchange"):
        server.receive_key_exchanges([clients[k].key_exchange() for k in IDS[:4]])


def test_corrupted_share_aborts_instead_of_a_wrong_sum(keys):
    roster = keys.roster()
    clients = make_clients(keys, roster)
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([c.key_exchange() for c in clients.values()])
    deliveries = server.route_shares([clients[k].share_keys(exchanges) for k in IDS])
    xs = updates()
    request = server.collect_masked([clients[k].mask(deliveries[k], xs[k]) for k in IDS])
    responses = [clients[k].unmask(request) for k in IDS]
    bad = responses[0].self_shares.copy()
    bad[1, 0] = (bad[1, 0] + 1) % secagg.shamir.PRIME
    responses[0] = responses[0].model_copy(update={"self_shares": bad})
    with pytest.raises(SecAggAborted, match="commitment|inconsistent"):
        server.finish(responses)


def test_forged_key_exchange_is_rejected_by_server_and_client(keys):
    roster = keys.roster()
    clients = make_clients(keys, roster)
    messages = [c.key_exchange() for c in clients.values()]
    forged = messages[0].model_copy(update={"signature": messages[1].signature})
    server = SecAggServer(roster, scale=SCALE)
    kept = server.receive_key_exchanges([forged, *messages[1:]])
    assert IDS[0] not in server.u1 and "signature" in server.rejected[IDS[0]]
    assert len(kept) == len(IDS) - 1
    with pytest.raises(SecAggError, match="signature"):
        clients[IDS[1]].share_keys([forged, *messages[1:]])


def test_swapped_ciphertext_is_detected(keys):
    roster = keys.roster()
    clients = make_clients(keys, roster)
    messages = [c.key_exchange() for c in clients.values()]
    first = messages[0]
    swapped = list(first.ciphertexts)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    tampered = first.model_copy(update={"ciphertexts": tuple(swapped)})
    with pytest.raises(SecAggError, match="digest"):
        clients[first.recipients[0]].share_keys([tampered, *messages[1:]])


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x04]) + data[at + 1 :]


def _flip_field(message: secagg.KeyExchange, field: str) -> secagg.KeyExchange:
    """`message` with one bit changed in `field` (in its first entry for a tuple)."""
    value = getattr(message, field)
    if isinstance(value, tuple):
        value = (_flip(value[0], len(value[0]) // 2), *value[1:])
    else:
        value = _flip(value, len(value) // 2)
    return message.model_copy(update={field: value})


def test_key_exchanges_are_ml_dsa_65_signatures_over_the_ciphertext_digests(keys):
    roster = keys.roster()
    message = make_clients(keys, roster)[IDS[0]].key_exchange()
    assert len(message.signature) == 3309  # an ML-DSA-65 signature (FIPS 204)
    assert all(len(c) == secagg.KEM_CIPHERTEXT_BYTES for c in message.ciphertexts)
    assert message.digests == tuple(hashlib.sha256(c).digest() for c in message.ciphertexts)
    signed = message.signed_message()
    assert all(d in signed for d in message.digests)
    Verifier().verify(roster.signing_keys[IDS[0]], signed, message.signature, secagg.CTX_SECAGG)
    with pytest.raises(SignatureError):  # another client's registered key
        Verifier().verify(roster.signing_keys[IDS[1]], signed, message.signature, secagg.CTX_SECAGG)


@pytest.mark.parametrize(
    "field", ["ciphertexts", "signature", "digests", "pair_commitments", "self_commitment"]
)
def test_a_flipped_bit_in_a_key_exchange_drops_its_sender_and_the_sum_stays_exact(keys, field):
    """Ciphertexts are bound by their signed digests, the rest by the ML-DSA-65 signature:
    the server leaves the sender out of U1, and a recipient that got the altered message
    anyway refuses it; the round goes on without the sender and its sum is exact."""
    roster = keys.roster()
    clients = make_clients(keys, roster)
    messages = [clients[k].key_exchange() for k in IDS]
    sender = IDS[1]  # ciphertexts to every higher id, and a lower one (IDS[0]) to accept
    tampered = _flip_field(messages[1], field)
    assert tampered != messages[1]
    recipient = make_clients(keys, roster)[tampered.recipients[0]]  # its ciphertext changed
    recipient.key_exchange()
    with pytest.raises(SecAggError, match="digest|signature"):
        recipient.share_keys([*messages[:1], tampered, *messages[2:]])
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([*messages[:1], tampered, *messages[2:]])
    assert sender not in server.u1 and len(server.u1) == len(IDS) - 1
    assert re.search("digest|signature", server.rejected[sender])
    survivors = server.u1
    deliveries = server.route_shares([clients[k].share_keys(exchanges) for k in survivors])
    xs = updates(seed=11)
    request = server.collect_masked([clients[k].mask(deliveries[k], xs[k]) for k in survivors])
    result = server.finish([clients[k].unmask(request) for k in request.survivors])
    assert result.included == survivors
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, survivors))


def test_a_substituted_kem_key_on_the_ledger_keeps_its_client_out_of_every_pair(keys):
    """A man in the middle registered its own encapsulation key for client v: v finds its
    key is not the registered one and refuses the round; the others' ciphertexts to the
    substitute key are never used (v is not in U1), and their sum is exact."""
    victim = IDS[3]
    attacker = kem_public_key(bytes(range(32)), victim)  # another master secret's key
    honest = keys.roster()
    roster = honest.model_copy(update={"kem_keys": {**honest.kem_keys, victim: attacker}})
    with pytest.raises(SecAggError, match="registered key"):
        SecAggClient(
            victim,
            roster,
            kem_seed=kem_seed(MASTER, victim),
            signer=keys.signers[victim],
            secret=round_secret(MASTER, victim, roster.round),
            scale=SCALE,
        )
    others = tuple(k for k in IDS if k != victim)
    clients = {
        k: SecAggClient(
            k,
            roster,
            kem_seed=kem_seed(MASTER, k),
            signer=keys.signers[k],
            secret=round_secret(MASTER, k, roster.round),
            scale=SCALE,
        )
        for k in others
    }
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([clients[k].key_exchange() for k in others])
    assert server.u1 == others
    deliveries = server.route_shares([clients[k].share_keys(exchanges) for k in others])
    xs = updates(seed=12)
    request = server.collect_masked([clients[k].mask(deliveries[k], xs[k]) for k in others])
    result = server.finish([clients[k].unmask(request) for k in others])
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, others))


def test_substituted_kem_keys_below_the_threshold_abort_the_round(keys):
    victims = IDS[:4]  # t = 5 of 8: four refusing clients leave too few
    roster = keys.roster()
    substitutes = {k: kem_public_key(bytes(range(32)), k) for k in victims}
    roster = roster.model_copy(update={"kem_keys": {**roster.kem_keys, **substitutes}})
    for k in victims:
        with pytest.raises(SecAggError, match="registered key"):
            SecAggClient(
                k,
                roster,
                kem_seed=kem_seed(MASTER, k),
                signer=keys.signers[k],
                secret=bytes(32),
                scale=SCALE,
            )
    rest = [
        SecAggClient(
            k,
            roster,
            kem_seed=kem_seed(MASTER, k),
            signer=keys.signers[k],
            secret=round_secret(MASTER, k, roster.round),
            scale=SCALE,
        )
        for k in IDS[4:]
    ]
    server = SecAggServer(roster, scale=SCALE)
    with pytest.raises(SecAggAborted, match="key_exchange") as info:
        server.receive_key_exchanges([c.key_exchange() for c in rest])
    assert (info.value.failure.available, info.value.failure.threshold) == (4, 5)


def test_client_refuses_bad_unmask_requests(keys):
    roster = keys.roster()
    clients = make_clients(keys, roster)
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([c.key_exchange() for c in clients.values()])
    deliveries = server.route_shares([clients[k].share_keys(exchanges) for k in IDS])
    xs = updates()
    for k in IDS:
        clients[k].mask(deliveries[k], xs[k])
    both = secagg.UnmaskRequest(round=3, survivors=IDS, dropped=(IDS[-1],))
    with pytest.raises(SecAggError, match="inconsistent"):
        clients[IDS[0]].unmask(both)
    few = secagg.UnmaskRequest(round=3, survivors=IDS[:4], dropped=IDS[4:])
    with pytest.raises(SecAggAborted, match="refuses"):
        clients[IDS[1]].unmask(few)


def test_steps_out_of_order_raise(keys):
    roster = keys.roster()
    client = make_clients(keys, roster)[IDS[0]]
    with pytest.raises(SecAggError, match="out of order"):
        client.share_keys([])
    client.key_exchange()
    with pytest.raises(SecAggError, match="out of order"):
        client.key_exchange()


def test_client_key_must_match_the_roster(keys):
    roster = keys.roster()
    with pytest.raises(SecAggError, match="registered key"):
        SecAggClient(
            IDS[0],
            roster,
            kem_seed=kem_seed(MASTER, IDS[1]),
            signer=keys.signers[IDS[0]],
            secret=bytes(32),
            scale=SCALE,
        )
    with pytest.raises(SecAggError, match="not in the roster"):
        SecAggClient(
            99, roster, kem_seed=kem_seed(MASTER, 99), signer=None, secret=bytes(32), scale=SCALE
        )


def test_malformed_response_is_dropped_and_the_sum_still_exact(keys):
    roster = keys.roster()
    clients = make_clients(keys, roster)
    server = SecAggServer(roster, scale=SCALE)
    exchanges = server.receive_key_exchanges([c.key_exchange() for c in clients.values()])
    deliveries = server.route_shares([clients[k].share_keys(exchanges) for k in IDS])
    xs = updates(seed=5)
    request = server.collect_masked([clients[k].mask(deliveries[k], xs[k]) for k in IDS])
    responses = [clients[k].unmask(request) for k in IDS]
    responses[0] = UnmaskResponse(
        round=3,
        sender=IDS[0],
        self_owners=IDS,
        self_shares=np.zeros((2, 16), dtype=np.int64),
        pairs=(),
        pair_shares=np.zeros((0, 16), dtype=np.int64),
    )
    result = server.finish(responses)
    assert "malformed" in server.rejected[IDS[0]]
    np.testing.assert_array_equal(result.fixed_point_total, fixed_sum(xs, IDS))


def test_roster_validation(keys):
    with pytest.raises(ValidationError, match="threshold"):
        keys.roster(threshold=9)
    with pytest.raises(ValidationError, match="same clients"):
        Roster(round=0, threshold=1, kem_keys={1: b"x"}, signing_keys={2: b"y"})


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("value", "n", "t"), [(2 / 3, 100, 67), (0.51, 10, 6), (1.0, 7, 7), (4, 6, 4)]
)
def test_threshold_count(value, n, t):
    assert threshold_count(SecAggConfig(enabled=True, threshold=value), n) == t


@pytest.mark.parametrize("value", [0.5, 0.2, 1.5, 1, 0, True])
def test_threshold_validation(value):
    with pytest.raises(ValidationError, match="threshold"):
        SecAggConfig(threshold=value)


def test_threshold_count_rejects_impossible_counts():
    with pytest.raises(ConfigError, match="exceeds"):
        threshold_count(SecAggConfig(threshold=11), 10)
    with pytest.raises(ConfigError, match="majority"):
        threshold_count(SecAggConfig(threshold=5), 10)


def test_config_is_frozen_and_strict():
    config = SecAggConfig(enabled=True)
    assert config.scale == 2.0**16 and math.isclose(config.threshold, 2 / 3)
    with pytest.raises(ValidationError):
        SecAggConfig(enabled=True, shares=3)
    with pytest.raises(ValidationError):
        config.enabled = False  # type: ignore[misc]
    with pytest.raises(ValidationError, match="scale"):
        SecAggConfig(scale=0)


@pytest.mark.parametrize("rule", secagg.ROBUST_RULES)
def test_robust_rules_are_rejected_under_secagg(rule):
    with pytest.raises(ConfigError, match="only their sum"):
        check_rule_compatible(rule)
    with pytest.raises(ConfigError, match=rule):
        check_secagg_config(SecAggConfig(enabled=True), clients_per_round=10, rule=rule)


@pytest.mark.parametrize("rule", ["fedavg", "fedprox"])
def test_sum_rules_are_accepted(rule):
    check_rule_compatible(rule)
    check_secagg_config(SecAggConfig(enabled=True), clients_per_round=10, rule=rule, clip=1.0)
    check_secagg_config(SecAggConfig(enabled=False), clients_per_round=1, rule="krum")


def test_hybrid_rule_is_rejected_under_secagg():
    with pytest.raises(ConfigError, match="own signal-to-noise"):
        check_secagg_config(SecAggConfig(enabled=True), clients_per_round=10, rule="hybrid")


def test_server_side_clipping_and_norm_bound_are_rejected_under_secagg():
    config = SecAggConfig(enabled=True)
    with pytest.raises(ConfigError, match=r"aggregation\.clip_norm=1\.0"):
        check_secagg_config(config, clients_per_round=10, rule="fedavg", clip_norm=1.0)
    with pytest.raises(ConfigError, match=r"ledger\.norm_bound=5\.0"):
        check_secagg_config(config, clients_per_round=10, rule="fedavg", norm_bound=5.0)
    check_secagg_config(  # the same values with secagg off are not this check's business
        SecAggConfig(), clients_per_round=10, rule="fedavg", clip_norm=1.0, norm_bound=5.0
    )


def test_a_sum_of_one_input_is_rejected():
    with pytest.raises(ConfigError, match="t=1"):
        check_secagg_config(SecAggConfig(enabled=True), clients_per_round=1, rule="fedavg")
    check_secagg_config(SecAggConfig(enabled=True), clients_per_round=2, rule="fedavg")


def test_fixed_point_range_is_checked_with_the_clip_norm():
    config = SecAggConfig(enabled=True, scale=2.0**20)
    check_secagg_config(config, clients_per_round=100, rule="fedavg", clip=10.0)
    with pytest.raises(ConfigError, match="overflow"):
        check_secagg_config(config, clients_per_round=100, rule="fedavg", clip=30.0)


# --------------------------------------------------------------------------- ledger view


def _masked(round_=3, sender=5, weight=0.25, words=(1, 2, 2**32 - 1)) -> secagg.MaskedInput:
    masked = np.array(words, dtype=np.uint32)
    return secagg.MaskedInput(round=round_, sender=sender, weight=weight, masked=masked)


def test_masked_digest_binds_round_sender_weight_and_every_word():
    base = secagg.masked_digest(_masked())
    assert len(base) == 32
    assert secagg.masked_digest(_masked()) == base
    variants = [
        _masked(round_=4),
        _masked(sender=6),
        _masked(weight=0.25000001),
        _masked(words=(1, 2, 2**32 - 2)),
        _masked(words=(1, 2, 2**32 - 1, 0)),
    ]
    assert len({secagg.masked_digest(m) for m in variants} | {base}) == 6
    with pytest.raises(SecAggError, match="uint32"):
        secagg.masked_digest(
            secagg.MaskedInput(round=0, sender=0, weight=1.0, masked=np.zeros(3, np.float32))
        )


def test_digest_carrier_is_finite_exact_and_carries_the_digest():
    digest = bytes(range(200, 232))
    carrier = secagg.digest_carrier(digest, 100)
    assert carrier.dtype == np.float32 and carrier.shape == (100,)
    assert np.isfinite(carrier).all() and not carrier[32:].any()
    assert carrier[:32].astype(np.uint8).tobytes() == digest  # exact: bytes read back
    other = secagg.digest_carrier(digest[:-1] + b"\x00", 100)
    assert other.tobytes() != carrier.tobytes()
    with pytest.raises(SecAggError, match="cannot carry"):
        secagg.digest_carrier(digest, 31)
    with pytest.raises(SecAggError, match="32 bytes"):
        secagg.digest_carrier(digest[:31], 100)
