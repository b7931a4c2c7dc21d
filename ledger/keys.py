"""Per-participant ML-DSA-65 seeds, derived from one master secret of the run.

    seed(role, index) = HKDF-SHA256(ikm=master_secret, salt=KEY_SALT,
                                    info=b"qfl/key/v1/<role>/<index>", length=32)

`index` is written in decimal ASCII (client 17 -> b"qfl/key/v1/client/17"), so every
(role, index) names its own key and a run's keys are reproducible from its master secret.
The seed goes to `ledger.crypto.signer_from_seed`, which gives the same key pair under
every backend.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final, Literal, get_args

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Role = Literal["client", "validator", "driver"]
ROLES: Final[tuple[str, ...]] = get_args(Role)

SEED_BYTES: Final = 32
MASTER_SECRET_BYTES: Final = 32
KEY_SALT: Final = b"qfl/key-salt/v1"
KEY_INFO_PREFIX: Final = b"qfl/key/v1/"
RUN_SEED_PREFIX: Final = b"qfl/master-secret/v1/run-seed/"
MASTER_SECRET_ENV: Final = "QFL_MASTER_SECRET"


def key_info(role: Role, index: int) -> bytes:
    """The HKDF info string of (`role`, `index`): b"qfl/key/v1/<role>/<index>"."""
    if role not in ROLES:
        raise ValueError(f"unknown key role {role!r}; expected one of {', '.join(ROLES)}")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"key index must be an int >= 0, got {index!r}")
    return KEY_INFO_PREFIX + f"{role}/{index}".encode("ascii")


def derive_seed(master_secret: bytes, role: Role, index: int) -> bytes:
    """The 32-byte ML-DSA-65 seed of participant `index` in `role`, by HKDF-SHA256."""
    if not isinstance(master_secret, bytes) or len(master_secret) < MASTER_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MASTER_SECRET_BYTES} bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(), length=SEED_BYTES, salt=KEY_SALT, info=key_info(role, index)
    )
    return hkdf.derive(master_secret)


def master_secret_from_run_seed(seed: int) -> bytes:
    """A deterministic 32-byte master secret for the run seed `seed`: SHA-256 of a label.

    For reproducible experiments only: anyone who knows the run seed can derive every
    key and forge every signature of the run. A production run takes a real secret
    instead (e.g. `secrets.token_bytes(32)`, kept out of the config and the ledger).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"run seed must be an int, got {seed!r}")
    return hashlib.sha256(RUN_SEED_PREFIX + str(seed).encode("ascii")).digest()


def run_master_secret(seed: int, secret: bytes | None = None) -> bytes:
    """The master secret of the run with seed `seed`: HMAC-SHA256(secret, label + seed).

    `secret` None: `master_secret_from_run_seed(seed)` (reproducible, not secret). With a
    secret, runs that differ only in their seed (a sweep's replicates) still get their
    own keys and noise, and a resume with the same secret and seed gets the same ones.
    """
    if secret is None:
        return master_secret_from_run_seed(seed)
    if len(secret) < MASTER_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MASTER_SECRET_BYTES} bytes")
    label = master_secret_from_run_seed(seed)  # validates the seed
    return hmac.new(secret, label, hashlib.sha256).digest()


def master_secret_from_hex(text: str) -> bytes:
    """A master secret given as hex (e.g. `QFL_MASTER_SECRET`), at least 32 bytes.

    The error names the problem, never the value: the text is a secret.
    """
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError(
            f"{MASTER_SECRET_ENV} must be hex digits (e.g. from `openssl rand -hex 32`)"
        ) from None
    if len(secret) < MASTER_SECRET_BYTES:
        raise ValueError(
            f"{MASTER_SECRET_ENV} has {len(secret)} bytes; it needs at least "
            f"{MASTER_SECRET_BYTES} ({2 * MASTER_SECRET_BYTES} hex digits)"
        )
    return secret


def master_secret_from_env(environ: Mapping[str, str]) -> bytes | None:
    """The master secret from `environ[MASTER_SECRET_ENV]`, or None where it is unset."""
    text = environ.get(MASTER_SECRET_ENV, "")
    return master_secret_from_hex(text) if text.strip() else None


__all__ = [
    "KEY_INFO_PREFIX",
    "KEY_SALT",
    "MASTER_SECRET_BYTES",
    "MASTER_SECRET_ENV",
    "ROLES",
    "Role",
    "SEED_BYTES",
    "derive_seed",
    "key_info",
    "master_secret_from_env",
    "master_secret_from_hex",
    "master_secret_from_run_seed",
    "run_master_secret",
]
