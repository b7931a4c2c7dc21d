"""Tests for ledger.keys: HKDF-SHA256 seeds per role and index, from a run's master secret."""

from __future__ import annotations

import hashlib
import hmac
import itertools

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.crypto import signer_from_seed
from ledger.keys import (
    KEY_SALT,
    MASTER_SECRET_ENV,
    ROLES,
    SEED_BYTES,
    derive_seed,
    key_info,
    master_secret_from_env,
    master_secret_from_hex,
    master_secret_from_run_seed,
    run_master_secret,
)

MASTER = bytes(range(100, 132))


def independent_hkdf(master: bytes, info: bytes) -> bytes:
    """The documented derivation, written out again with cryptography's HKDF."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"qfl/key-salt/v1", info=info)
    return hkdf.derive(master)


@pytest.mark.parametrize(
    ("role", "index", "info"),
    [
        ("client", 17, b"qfl/key/v1/client/17"),
        ("client", 0, b"qfl/key/v1/client/0"),
        ("validator", 3, b"qfl/key/v1/validator/3"),
        ("driver", 0, b"qfl/key/v1/driver/0"),
    ],
)
def test_derive_seed_matches_independent_hkdf(role, index: int, info: bytes) -> None:
    assert key_info(role, index) == info
    seed = derive_seed(MASTER, role, index)
    assert len(seed) == SEED_BYTES
    assert seed == independent_hkdf(MASTER, info)
    assert KEY_SALT == b"qfl/key-salt/v1"


def test_derivation_is_pinned() -> None:
    """Run seed 0's first client seed: a changed derivation would change every run's keys."""
    master = master_secret_from_run_seed(0)
    assert master.hex() == "d832ea6d630b3e9d49c63a2aa0e8ab0325831a3056d1bc54118041efee7bc1e3"
    assert derive_seed(master, "client", 0).hex() == (
        "a4f4d5dca1e6ed09e4b6e8a96ef493a3e44880c76044ebf7544308642f9a9281"
    )


def test_every_role_and_index_gets_its_own_seed() -> None:
    pairs = list(itertools.product(ROLES, [0, 1, 2, 10, 11, 100, 2**40]))
    seeds = {derive_seed(MASTER, role, index) for role, index in pairs}
    assert len(seeds) == len(pairs)


def test_same_inputs_same_seed_other_master_other_seed() -> None:
    assert derive_seed(MASTER, "client", 5) == derive_seed(bytes(MASTER), "client", 5)
    assert derive_seed(MASTER, "client", 5) != derive_seed(MASTER[::-1], "client", 5)


def test_different_role_or_index_gives_different_public_keys() -> None:
    keys = {
        signer_from_seed(derive_seed(MASTER, role, index), backend="cryptography").public_key
        for role, index in [("client", 0), ("client", 1), ("validator", 0), ("validator", 1)]
    }
    assert len(keys) == 4


@pytest.mark.parametrize("index", [-1, -17, True, 1.0, "3", None])
def test_index_must_be_a_non_negative_int(index) -> None:
    with pytest.raises(ValueError, match="index"):
        derive_seed(MASTER, "client", index)


@pytest.mark.parametrize("role", ["Client", "clients", "client/1", "", "aggregator"])
def test_unknown_role_is_rejected(role: str) -> None:
    with pytest.raises(ValueError, match="role"):
        derive_seed(MASTER, role, 0)  # type: ignore[arg-type]


@pytest.mark.parametrize("master", [b"", bytes(31), "x" * 32, bytearray(32)], ids=repr)
def test_master_secret_must_be_32_bytes_or_more(master) -> None:
    with pytest.raises(ValueError, match="master secret"):
        derive_seed(master, "client", 0)
    assert len(derive_seed(bytes(64), "client", 0)) == SEED_BYTES


def test_master_secret_from_run_seed_is_documented_sha256() -> None:
    for seed in (0, 1, -1, 2**70):
        label = b"qfl/master-secret/v1/run-seed/" + str(seed).encode()
        assert master_secret_from_run_seed(seed) == hashlib.sha256(label).digest()
    assert len({master_secret_from_run_seed(s) for s in range(-50, 50)}) == 100


def test_a_given_secret_is_mixed_with_the_run_seed_by_documented_hmac() -> None:
    secret = bytes(range(7, 47))
    for seed in (0, 1, -3):
        label = hashlib.sha256(b"qfl/master-secret/v1/run-seed/" + str(seed).encode()).digest()
        expected = hmac.new(secret, label, hashlib.sha256).digest()
        assert run_master_secret(seed, secret) == expected
    # replicates of a sweep (other seeds) and other secrets get other keys and noise
    assert run_master_secret(0, secret) != run_master_secret(1, secret)
    assert run_master_secret(0, secret) != run_master_secret(0, bytes(40))
    # without a secret: the documented, reproducible (and forgeable) run-seed secret
    assert run_master_secret(5) == master_secret_from_run_seed(5)
    assert run_master_secret(5, secret) != run_master_secret(5)
    with pytest.raises(ValueError, match="at least 32 bytes"):
        run_master_secret(0, bytes(31))


def test_master_secret_from_the_environment_is_hex_of_32_bytes_or_more() -> None:
    secret = bytes(range(32))
    assert master_secret_from_env({MASTER_SECRET_ENV: secret.hex()}) == secret
    assert master_secret_from_env({MASTER_SECRET_ENV: f" {secret.hex().upper()}\n"}) == secret
    assert master_secret_from_env({}) is None
    assert master_secret_from_env({MASTER_SECRET_ENV: "  "}) is None
    assert master_secret_from_hex("ab" * 48) == bytes([0xAB]) * 48


@pytest.mark.parametrize(
    ("text", "needle"),
    [("zz" * 32, "hex digits"), ("ab" * 31, "has 31 bytes"), ("abc", "hex digits")],
)
def test_a_bad_environment_secret_is_named_but_never_echoed(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle) as info:
        master_secret_from_env({MASTER_SECRET_ENV: text})
    assert MASTER_SECRET_ENV in str(info.value) and text not in str(info.value)


@pytest.mark.parametrize("seed", [True, 1.5, "7", None, b"\x07"])
def test_run_seed_must_be_an_int(seed) -> None:
    with pytest.raises(ValueError, match="run seed"):
        master_secret_from_run_seed(seed)


@settings(max_examples=200, deadline=None)
@given(
    a=st.tuples(st.sampled_from(ROLES), st.integers(min_value=0, max_value=10**12)),
    b=st.tuples(st.sampled_from(ROLES), st.integers(min_value=0, max_value=10**12)),
)
def test_info_strings_are_injective(a: tuple[str, int], b: tuple[str, int]) -> None:
    assert (key_info(*a) == key_info(*b)) == (a == b)
