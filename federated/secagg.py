"""Secure aggregation with dropout recovery (Bonawitz et al. 2017), post-quantum keys.

The server learns sum_k w_k x_k over the clients whose masked inputs arrived, and nothing
about any single x_k. One round is four client steps and four server steps, as pure
message-passing classes (`SecAggClient`, `SecAggServer`) with pydantic messages between
them, so client steps can run in runner actors and server steps in the aggregator:

    server                                   client u (of the roster's participants)
    Roster (ledger keys, threshold t) ---->
                                       <---- key_exchange(): KeyExchange
    receive_key_exchanges -> U1, all KeyExchanges ---->
                                       <---- share_keys(exchanges): ShareBundle
    route_shares -> U2, a ShareDelivery per client ---->
                                       <---- mask(delivery, x_u, w_u): MaskedInput
    collect_masked -> U3, UnmaskRequest ---->
                                       <---- unmask(request): UnmaskResponse
    finish(responses) -> SecAggResult (or SecAggAborted)

Keys. Each client has a long-term ML-KEM-768 key pair (FIPS 203; `kem_seed` derives it
from the run's master secret by HKDF, `kem_public_key` gives the encapsulation key the
ledger's Genesis registers, `Genesis.kem_keys`) and its ML-DSA-65 signing key (registered
in `Genesis.clients`); the `Roster` carries both. A client whose own key differs from the
roster's refuses the round (`SecAggClient`). For every pair u < v, u encapsulates to v's
key; HKDF of the shared secret gives the pair's mask seed s_uv and a channel key c_uv. u
signs (ML-DSA-65, context `CTX_SECAGG`) the SHA-256 digests of its ciphertexts and
commitments SHA-256(s_uv), SHA-256(b_u) to its secrets; the server and each recipient
check that signature and every ciphertext against its digest, so a changed bit in a
ciphertext, a digest or the signature drops the exchange.

Masking. x_u in fixed point, in Z_{2^32} (`encode`: round(w_u x_u * scale) mod 2^32). u
sends y_u = x_u + PRG(b_u) + sum_{v > u} PRG(s_uv) - sum_{v < u} PRG(s_vu) over v in U2,
with b_u its self-mask seed and PRG the AES-256-CTR keystream as uint32 words. Pair masks
cancel in the sum; each y_u alone is uniform in Z_{2^32}^P.

Dropouts. u deals t-of-n Shamir shares (`federated.shamir`) of b_u and of the seeds of the
pairs it owns (s_uv, v > u) to every client of U1, encrypted with AES-256-GCM under c_uw.
For the unmask step each survivor reveals, for every client of U3, its share of the
self-mask seed, and for every client that dropped before masking (U2 \\ U3), its shares of
that client's pair seeds with the survivors; never both for one client. With t shares the
server rebuilds each seed, checks it against its signed commitment, and removes the masks.
Fewer than t clients at any step: `SecAggAborted`, never a wrong sum.

Scope: an honest-but-curious server and up to n - t dropouts; clients verify every
signature addressed to them. The consistency round of the actively secure variant is not
implemented. Masked inputs cannot be checked for size (a norm bound must come from
clipping on the client), and rules that need individual updates (robust rules, the hybrid
rule's per-client shrinkage) cannot run under secure aggregation (`check_rule_compatible`).
The ledger signs a masked input through `masked_digest` and `digest_carrier`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Final, NoReturn

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from federated import shamir
from ledger.crypto import SignatureError, Signer, Verifier
from ledger.keeper import KEM_SEED_BYTES, client_kem_key, client_kem_seed
from ledger.keys import KEY_SALT, MASTER_SECRET_BYTES
from ledger.records import KEM_KEY_BYTES
from qfl.errors import ConfigError, TrainingError

CTX_SECAGG: Final = b"qfl/secagg/v1"  # FIPS 204 context of key-exchange signatures
KEM_PUBLIC_KEY_BYTES: Final = KEM_KEY_BYTES  # 1184
KEM_CIPHERTEXT_BYTES: Final = 1088
ROUND_INFO_PREFIX: Final = b"qfl/secagg/v1/client/"
MODULUS_BITS: Final = 32
ROBUST_RULES: Final = ("median", "trimmed_mean", "krum", "multi_krum")
_SALT: Final = b"qfl/secagg/v1"
_COMMIT: Final = b"qfl/secagg/v1/commit/"
_U64: Final = struct.Struct(">Q")


class SecAggError(TrainingError):
    """A secure-aggregation message is invalid or a step cannot run."""


class SecAggFailure(BaseModel):
    """A round that secure aggregation aborted, as data to record (ledger, MLflow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    round: int
    stage: str  # key_exchange | share | mask | unmask
    available: int  # clients left at that stage
    threshold: int
    reason: str


class SecAggAborted(SecAggError):
    """The round cannot finish correctly (fewer than t clients left, a bad share)."""

    def __init__(self, failure: SecAggFailure) -> None:
        super().__init__(
            f"secure aggregation of round {failure.round} aborted at {failure.stage}: "
            f"{failure.reason} ({failure.available} clients, threshold {failure.threshold})"
        )
        self.failure = failure


# --------------------------------------------------------------------------- config


class SecAggConfig(BaseModel):
    """Secure aggregation: on or off, the Shamir threshold and the fixed-point scale.

    threshold: a fraction of the round's clients in (0.5, 1] (t = ceil(fraction * n)), or a
    count >= 2. More than half is required: with t <= n/2 two disjoint groups could each
    rebuild secrets. scale: a value x is sent as round(x * scale) mod 2^32, so the
    resolution is 1 / scale and n clients need |w x| < 2^31 / (n * scale).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    threshold: int | float = Field(2 / 3, description="fraction in (0.5, 1] or a count >= 2")
    scale: float = Field(2.0**16, gt=0.0, le=2.0**30, description="fixed-point scale")

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: int | float) -> int | float:
        if isinstance(value, bool):
            raise ValueError("threshold must be a fraction or a count, not a bool")
        if isinstance(value, int):
            if value < 2:
                raise ValueError(f"a threshold count must be >= 2, got {value}")
        elif not 0.5 < value <= 1.0:
            raise ValueError(f"a threshold fraction must be in (0.5, 1], got {value}")
        return value


def threshold_count(config: SecAggConfig, n: int) -> int:
    """t for a round of n clients; ConfigError when it cannot be met or is not a majority."""
    if isinstance(config.threshold, int):
        t = config.threshold
    else:
        t = math.ceil(config.threshold * n - 1e-9)
    t = max(t, 1)
    if t > n:
        raise ConfigError(f"secagg.threshold={config.threshold} exceeds the {n} clients per round")
    if 2 * t <= n:
        raise ConfigError(
            f"secagg.threshold={config.threshold} gives t={t}, not a majority of {n} clients"
        )
    return t


def check_rule_compatible(rule: str) -> None:
    """Raise ConfigError when `rule` needs individual updates, which secure aggregation hides.

    Robust rules (median, trimmed mean, Krum) look at every update; the hybrid rule's SNR
    shrinkage (Eq. 7) scales each client's quantum entries by a statistic of that update.
    FedAvg and FedProx need only the weighted sum with public weights n_k.
    """
    if rule in ROBUST_RULES:
        raise ConfigError(
            f"aggregation rule {rule!r} needs every client's update, but secure aggregation "
            "reveals only their sum; use fedavg or fedprox (public weights) with secagg, or "
            "disable secagg.enabled to use a robust rule"
        )
    if rule == "hybrid":
        raise ConfigError(
            "aggregation rule 'hybrid' shrinks each client's quantum entries by that update's "
            "own signal-to-noise ratio (Eq. 7), but secure aggregation reveals only the sum; "
            "use fedavg or fedprox with secagg, or disable secagg.enabled"
        )


def check_secagg_config(
    config: SecAggConfig,
    *,
    clients_per_round: int,
    rule: str,
    clip: float | None = None,
    clip_norm: float | None = None,
    norm_bound: float | None = None,
) -> None:
    """The cross-field checks pipelines/config.py runs when secagg is enabled.

    The rule must work on sums (`check_rule_compatible`); the server cannot clip
    (aggregation.clip_norm) nor bound (ledger.norm_bound) updates it never sees: clipping
    must happen on the client (privacy.clip, `clip`); t must be a majority the round can
    meet and at least 2 (a "sum" of one input is that input); and with a clip norm C the
    fixed-point sum must not overflow: clients_per_round * C * scale < 2^31 (each coordinate
    of a clipped update is <= C).
    """
    if not config.enabled:
        return
    check_rule_compatible(rule)
    if clip_norm is not None:
        raise ConfigError(
            f"aggregation.clip_norm={clip_norm} clips each update on the server, but under "
            "secure aggregation the server sees only masked inputs; remove aggregation."
            "clip_norm (clients clip before masking with privacy.mode central and privacy.clip)"
        )
    if norm_bound is not None:
        raise ConfigError(
            f"ledger.norm_bound={norm_bound} cannot be checked under secure aggregation: the "
            "keeper sees only a digest of each masked input, never the update; remove "
            "ledger.norm_bound (clients clip before masking with privacy.mode central and "
            "privacy.clip)"
        )
    t = threshold_count(config, clients_per_round)
    if t < 2:
        raise ConfigError(
            f"secagg.threshold={config.threshold} gives t={t} for {clients_per_round} clients "
            "per round: a sum of one masked input is that client's update; sample at least 2"
        )
    if clip is not None and clients_per_round * clip * config.scale >= 2.0 ** (MODULUS_BITS - 1):
        raise ConfigError(
            f"secagg.scale={config.scale}: {clients_per_round} clipped updates (C={clip}) "
            "overflow 32-bit fixed point; lower secagg.scale"
        )


# --------------------------------------------------------------------------- fixed point


def encode(x: np.ndarray, scale: float, summands: int) -> np.ndarray:
    """round(x * scale) mod 2^32 as uint32; SecAggError if `summands` such values may overflow."""
    q = np.rint(np.asarray(x, dtype=np.float64) * scale)
    if not np.isfinite(q).all():
        raise SecAggError("update has a non-finite entry; it cannot be encoded")
    bound = 2.0 ** (MODULUS_BITS - 1) / max(summands, 1)
    peak = float(np.max(np.abs(q))) if q.size else 0.0
    if peak >= bound:
        raise SecAggError(
            f"fixed-point overflow: |x * scale| reaches {peak:.3g} but {summands} clients "
            f"need < {bound:.3g}; clip the updates or lower secagg.scale"
        )
    return q.astype(np.int64).astype(np.uint32)


def decode(total: np.ndarray, scale: float) -> np.ndarray:
    """The signed fixed-point sum back to float64: the uint32 words read as int32, / scale."""
    return np.asarray(total, dtype=np.uint32).view(np.int32).astype(np.float64) / scale


def prg_words(seed: bytes, length: int) -> np.ndarray:
    """PRG(seed): `length` uint32 words of the AES-256-CTR keystream under `seed`."""
    return np.frombuffer(shamir.keystream(seed, 4 * length), dtype="<u4").astype(np.uint32)


class _MaskAccumulator:
    """Adds and subtracts PRG expansions into one uint32 vector, reusing one buffer."""

    def __init__(self, start: np.ndarray) -> None:
        self.total = np.array(start, dtype=np.uint32)
        nbytes = 4 * self.total.size
        self._zeros = memoryview(bytes(nbytes))
        self._buffer = bytearray(nbytes + 16)  # update_into may want a block of slack
        self._words = np.frombuffer(self._buffer, dtype="<u4", count=self.total.size)

    def _expand(self, seed: bytes) -> np.ndarray:
        encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        encryptor.update_into(self._zeros, self._buffer)
        return self._words

    def add(self, seed: bytes) -> None:
        self.total += self._expand(seed)  # uint32: wraps mod 2^32

    def subtract(self, seed: bytes) -> None:
        self.total -= self._expand(seed)


# --------------------------------------------------------------------------- keys


def _hkdf(ikm: bytes, info: bytes, length: int, salt: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def kem_seed(master_secret: bytes, client_id: int) -> bytes:
    """The 64-byte ML-KEM-768 seed of `client_id`: HKDF-SHA256(master, KEY_SALT, kem info).

    info = b"qfl/kem/v1/client/<id>", distinct from the ML-DSA seeds of `ledger.keys`
    (`ledger.keeper.client_kem_seed`, which the ledger's Genesis registry uses too).
    """
    return client_kem_seed(master_secret, client_id)


def kem_private_key(seed: bytes) -> mlkem.MLKEM768PrivateKey:
    """The ML-KEM-768 decapsulation key FIPS 203 derives from a 64-byte seed."""
    if not isinstance(seed, bytes) or len(seed) != KEM_SEED_BYTES:
        raise ValueError(f"an ML-KEM seed is {KEM_SEED_BYTES} bytes")
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)


def kem_public_key(master_secret: bytes, client_id: int) -> bytes:
    """The 1184-byte ML-KEM-768 encapsulation key of `client_id`, as Genesis registers it."""
    return client_kem_key(master_secret, client_id)


def round_secret(master_secret: bytes, client_id: int, round_: int) -> bytes:
    """A client's 32-byte secret for one round (self-mask seed, Shamir coefficients).

    Derived from the master secret, so reproducible; as secret as the master secret is.
    """
    if len(master_secret) < MASTER_SECRET_BYTES:
        raise ValueError(f"master secret must be at least {MASTER_SECRET_BYTES} bytes")
    info = ROUND_INFO_PREFIX + f"{client_id}/round/{round_}".encode("ascii")
    return _hkdf(master_secret, info, 32, KEY_SALT)


@functools.lru_cache(maxsize=4096)
def _kem_public(key: bytes) -> mlkem.MLKEM768PublicKey:
    return mlkem.MLKEM768PublicKey.from_public_bytes(key)


def _pair_keys(shared: bytes, round_: int, low: int, high: int) -> tuple[bytes, bytes]:
    """(mask seed s_uv, channel key c_uv) of pair low < high from the ML-KEM shared secret."""
    info = b"pair\x00" + _U64.pack(round_) + _U64.pack(low) + _U64.pack(high)
    material = _hkdf(shared, info, 64, _SALT)
    return material[:32], material[32:]


def commit(seed: bytes) -> bytes:
    """SHA-256 commitment to a 32-byte secret seed (hiding: the seed is uniformly random)."""
    return hashlib.sha256(_COMMIT + seed).digest()


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _point(client_id: int) -> int:
    return client_id + 1


# --------------------------------------------------------------------------- messages


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Roster(_Message):
    """Server -> clients: the round's participants, their ledger keys and the threshold."""

    round: int = Field(ge=0)
    threshold: int = Field(ge=1)
    kem_keys: dict[int, bytes]  # client id -> ML-KEM-768 encapsulation key
    signing_keys: dict[int, bytes]  # client id -> ML-DSA-65 public key

    @model_validator(mode="after")
    def _check(self) -> Roster:
        if set(self.kem_keys) != set(self.signing_keys):
            raise ValueError("kem_keys and signing_keys must name the same clients")
        if not 1 <= self.threshold <= len(self.kem_keys):
            raise ValueError(f"threshold {self.threshold} not in [1, {len(self.kem_keys)}]")
        if any(k < 0 or _point(k) >= shamir.PRIME for k in self.kem_keys):
            raise ValueError(f"client ids must be in [0, {shamir.PRIME - 1})")
        return self

    @property
    def participants(self) -> tuple[int, ...]:
        return tuple(sorted(self.kem_keys))


class KeyExchange(_Message):
    """Client u -> all: ML-KEM ciphertexts to every participant v > u, signed commitments."""

    round: int
    sender: int
    recipients: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]
    digests: tuple[bytes, ...]  # SHA-256 of each ciphertext
    pair_commitments: tuple[bytes, ...]  # commit(s_{sender, recipient})
    self_commitment: bytes  # commit(b_sender)
    signature: bytes = b""

    def signed_message(self) -> bytes:
        """Canonical bytes the sender signs: everything but the ciphertexts (their digests).

        Fixed-width fields, so the encoding is injective: a label, u64 round, sender and
        count n, the n recipients (u64), the n ciphertext digests, the n pair commitments
        and the self commitment (32 bytes each).
        """
        count = len(self.recipients)
        if not count == len(self.digests) == len(self.pair_commitments):
            raise SecAggError(f"client {self.sender}: malformed key exchange")
        if count and set(map(len, self.digests)) | set(map(len, self.pair_commitments)) != {32}:
            raise SecAggError(f"client {self.sender}: digests and commitments are 32 bytes")
        if len(self.self_commitment) != 32:
            raise SecAggError(f"client {self.sender}: the self commitment is 32 bytes")
        return b"".join(
            [
                b"qfl/secagg/key-exchange/v1\x00",
                _U64.pack(self.round),
                _U64.pack(self.sender),
                _U64.pack(count),
                np.asarray(self.recipients, dtype=">u8").tobytes(),
                *self.digests,
                *self.pair_commitments,
                self.self_commitment,
            ]
        )


class ShareBundle(_Message):
    """Client u -> server: its shares for each holder, encrypted under the pair channel key."""

    round: int
    sender: int
    holders: tuple[int, ...]
    boxes: tuple[bytes, ...]


class ShareDelivery(_Message):
    """Server -> holder: U2, and the boxes other members of U2 addressed to this holder."""

    round: int
    holder: int
    u2: tuple[int, ...]
    senders: tuple[int, ...]
    boxes: tuple[bytes, ...]


class MaskedInput(_Message):
    """Client u -> server: y_u, and the public weight w_u it scaled x_u by."""

    round: int
    sender: int
    weight: float = Field(ge=0.0)
    masked: np.ndarray  # (P,) uint32


class UnmaskRequest(_Message):
    """Server -> survivors: whose inputs arrived (U3) and who dropped before masking."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


class UnmaskResponse(_Message):
    """Survivor -> server: self-mask seed shares of U3 and pair seed shares of the dropped."""

    round: int
    sender: int
    self_owners: tuple[int, ...]
    self_shares: np.ndarray  # (len(self_owners), 16) int64
    pairs: tuple[tuple[int, int], ...]  # (low, high) pair seeds, one end dropped
    pair_shares: np.ndarray  # (len(pairs), 16) int64


class SecAggResult(_Message):
    """The unmasked weighted sum sum_k w_k x_k over `included` (float64) and sum_k w_k."""

    round: int
    included: tuple[int, ...]  # U3: clients whose masked inputs are in the sum
    dropped: tuple[int, ...]  # in U2, masks removed, inputs not in the sum
    total: np.ndarray  # (P,) float64
    fixed_point_total: np.ndarray  # (P,) uint32: the exact sum of the encoded inputs
    weight: float

    @property
    def mean(self) -> np.ndarray:
        """The weighted mean sum_k w_k x_k / sum_k w_k (float32)."""
        if self.weight <= 0:
            raise SecAggError("the included clients' weights sum to 0")
        return (self.total / self.weight).astype(np.float32)


MASKED_DIGEST_LABEL: Final = b"qfl/secagg/masked-input/v1\x00"
_F64: Final = struct.Struct(">d")


def masked_digest(message: MaskedInput) -> bytes:
    """SHA-256 of what the server receives from a client: its masked input and weight.

    Over a label, u64 round, u64 sender, f64 weight (big-endian) and the masked words
    (little-endian uint32); fixed-width fields before one variable tail, so injective.
    """
    masked = np.asarray(message.masked)
    if masked.dtype != np.uint32 or masked.ndim != 1:
        raise SecAggError(f"client {message.sender}: masked input is not a uint32 vector")
    head = _U64.pack(message.round) + _U64.pack(message.sender) + _F64.pack(message.weight)
    body = np.ascontiguousarray(masked, dtype="<u4").tobytes()
    return hashlib.sha256(MASKED_DIGEST_LABEL + head + body).digest()


def digest_carrier(digest: bytes, size: int) -> np.ndarray:
    """The (size,) float32 vector that stands for a masked input where a float update is due.

    The ledger's contract signs and checks float32 updates (`ledger.encoding.weights_digest`,
    finite values, the model's shape). A uint32 masked input has no injective finite float32
    image of the same length, so the ledger gets this vector instead: the 32 bytes of
    `masked_digest` as the values 0..255 in its first 32 entries (exact in float32), zeros
    after. Its digest binds the masked input through SHA-256; its norm says nothing about
    the update (so no norm bound applies under secure aggregation).
    """
    if len(digest) != 32:
        raise SecAggError(f"a masked-input digest is 32 bytes, got {len(digest)}")
    if size < len(digest):
        raise SecAggError(f"a model of {size} parameters cannot carry a 32-byte digest")
    carrier = np.zeros(size, dtype=np.float32)
    carrier[: len(digest)] = np.frombuffer(digest, dtype=np.uint8)
    return carrier


def _aad(round_: int, sender: int, holder: int) -> bytes:
    return b"qfl/secagg/shares/v1\x00" + _U64.pack(round_) + _U64.pack(sender) + _U64.pack(holder)


def _nonce(sender: int) -> bytes:
    return sender.to_bytes(12, "big")  # each channel key carries one box per direction


def _owned(sender: int, members: Sequence[int]) -> Sequence[int]:
    """The partners v > sender whose pair seeds `sender` owns (deals shares of).

    `members` is sorted ascending, so they are the members after `sender`.
    """
    return members[bisect.bisect_right(members, sender) :]


# --------------------------------------------------------------------------- client


class SecAggClient:
    """One client's side of a round. Not reusable: one instance per client per round.

    kem_seed: the client's long-term ML-KEM seed (`kem_seed`); signer: its ML-DSA-65 key;
    secret: a fresh 32-byte secret for this round (`round_secret`, or secrets.token_bytes).
    """

    def __init__(
        self,
        client_id: int,
        roster: Roster,
        *,
        kem_seed: bytes,
        signer: Signer,
        secret: bytes,
        scale: float,
        verifier: Verifier | None = None,
    ) -> None:
        if client_id not in roster.kem_keys:
            raise SecAggError(f"client {client_id} is not in the roster of round {roster.round}")
        if len(secret) != 32:
            raise SecAggError("a round secret is 32 bytes")
        self.id = client_id
        self.roster = roster
        self.round = roster.round
        self.scale = scale
        self._kem = kem_private_key(kem_seed)
        if self._kem.public_key().public_bytes_raw() != roster.kem_keys[client_id]:
            raise SecAggError(f"client {client_id}: KEM seed does not match the registered key")
        self._signer = signer
        self._verifier = verifier or Verifier()
        self._self_seed = _hkdf(secret, b"self-mask", 32, _SALT)
        self._shamir_key = _hkdf(secret, b"shamir", 32, _SALT)
        self._mask_seeds: dict[int, bytes] = {}  # partner -> s_{min, max}
        self._channels: dict[int, bytes] = {}  # partner -> c_{min, max}
        self._u1: tuple[int, ...] = ()
        self._u2: tuple[int, ...] = ()
        self._own_shares: np.ndarray | None = None  # my share of my own secrets
        self._dealt: dict[int, np.ndarray] = {}  # dealer -> (1 + owned, 16) shares dealt to me
        self._step = 0

    def _advance(self, step: int, name: str) -> None:
        if self._step != step:
            raise SecAggError(f"client {self.id}: {name} out of order")
        self._step = step + 1

    def key_exchange(self) -> KeyExchange:
        """Step 1: encapsulate to every participant v > me; sign digests and commitments."""
        self._advance(0, "key_exchange")
        recipients = [v for v in self.roster.participants if v > self.id]
        ciphertexts, commitments = [], []
        for v in recipients:
            shared, ciphertext = _kem_public(self.roster.kem_keys[v]).encapsulate()
            mask_seed, channel = _pair_keys(shared, self.round, self.id, v)
            self._mask_seeds[v], self._channels[v] = mask_seed, channel
            ciphertexts.append(ciphertext)
            commitments.append(commit(mask_seed))
        unsigned = KeyExchange(
            round=self.round,
            sender=self.id,
            recipients=tuple(recipients),
            ciphertexts=tuple(ciphertexts),
            digests=tuple(_digest(c) for c in ciphertexts),
            pair_commitments=tuple(commitments),
            self_commitment=commit(self._self_seed),
        )
        signature = self._signer.sign(unsigned.signed_message(), CTX_SECAGG)
        return unsigned.model_copy(update={"signature": signature})

    def _accept(self, message: KeyExchange) -> None:
        """Verify a lower-id sender's signed ciphertext to me and decapsulate it."""
        if not len(message.recipients) == len(message.ciphertexts) == len(message.digests):
            raise SecAggError(f"client {message.sender}: malformed key exchange")
        try:
            index = message.recipients.index(self.id)
        except ValueError:
            raise SecAggError(f"client {message.sender} sent no ciphertext to {self.id}") from None
        ciphertext = message.ciphertexts[index]
        if len(ciphertext) != KEM_CIPHERTEXT_BYTES:
            raise SecAggError(
                f"client {message.sender}: a ciphertext is not {KEM_CIPHERTEXT_BYTES} bytes"
            )
        if _digest(ciphertext) != message.digests[index]:
            raise SecAggError(f"client {message.sender}: ciphertext does not match its digest")
        try:
            self._verifier.verify(
                self.roster.signing_keys[message.sender],
                message.signed_message(),
                message.signature,
                CTX_SECAGG,
            )
        except SignatureError as exc:
            raise SecAggError(f"client {message.sender}: key exchange signature: {exc}") from exc
        shared = self._kem.decapsulate(ciphertext)
        mask_seed, channel = _pair_keys(shared, self.round, message.sender, self.id)
        self._mask_seeds[message.sender], self._channels[message.sender] = mask_seed, channel

    def share_keys(self, exchanges: Sequence[KeyExchange]) -> ShareBundle:
        """Step 2: read U1 off the exchanges; deal shares of b_u and owned pair seeds to U1."""
        self._advance(1, "share_keys")
        by_sender = {m.sender: m for m in exchanges if m.round == self.round}
        if self.id not in by_sender:
            raise SecAggError(f"client {self.id} is missing from the key exchanges it received")
        if not set(by_sender) <= set(self.roster.participants):
            raise SecAggError("key exchanges from clients outside the roster")
        self._u1 = tuple(sorted(by_sender))
        for u in self._u1:
            if u < self.id:
                self._accept(by_sender[u])
        owned = _owned(self.id, self._u1)
        secrets = np.frombuffer(
            b"".join([self._self_seed, *(self._mask_seeds[v] for v in owned)]), dtype=np.uint8
        ).reshape(-1, shamir.SECRET_BYTES)
        holders = list(self._u1)
        shares = shamir.share(
            secrets, self.roster.threshold, [_point(h) for h in holders], self._shamir_key
        )  # (holders, 1 + owned, 16)
        boxes, others = [], []
        for h, share in zip(holders, shares, strict=True):
            if h == self.id:
                self._own_shares = share
                continue
            plain = np.ascontiguousarray(share, dtype="<u4").tobytes()
            box = AESGCM(self._channels[h]).encrypt(
                _nonce(self.id), plain, _aad(self.round, self.id, h)
            )
            others.append(h)
            boxes.append(box)
        return ShareBundle(
            round=self.round, sender=self.id, holders=tuple(others), boxes=tuple(boxes)
        )

    def _store(self, owner: int, share: np.ndarray) -> None:
        """Keep the shares `owner` dealt me: its self-mask seed, then its owned pair seeds."""
        expected = 1 + len(_owned(owner, self._u1))
        if share.shape != (expected, shamir.WORDS):
            raise SecAggError(f"client {owner} dealt {share.shape[0]} shares, not {expected}")
        self._dealt[owner] = share

    def _pair_share(self, low: int, high: int) -> np.ndarray:
        """My share of the pair seed s_{low, high}, dealt by its owner `low`."""
        return self._dealt[low][1 + _owned(low, self._u1).index(high)]

    def mask(self, delivery: ShareDelivery, update: np.ndarray, weight: float = 1.0) -> MaskedInput:
        """Step 3: keep the shares dealt to me; send y = enc(w x) + PRG(b) +- PRG(s_uv), v in U2.

        The weight is public (e.g. n_k / sum of the round's n_j): the server divides the sum
        by the included weights.
        """
        self._advance(2, "mask")
        u2 = tuple(sorted(delivery.u2))
        if delivery.holder != self.id or delivery.round != self.round:
            raise SecAggError(f"client {self.id}: share delivery is for someone else")
        if self.id not in u2 or not set(u2) <= set(self._u1):
            raise SecAggError(f"client {self.id}: U2 must contain me and lie inside U1")
        if set(delivery.senders) != set(u2) - {self.id}:
            raise SecAggError(f"client {self.id}: shares missing from some members of U2")
        self._u2 = u2
        if self._own_shares is None:
            raise SecAggError(f"client {self.id}: no shares of its own secrets")
        self._store(self.id, self._own_shares)
        for sender, box in zip(delivery.senders, delivery.boxes, strict=True):
            try:
                plain = AESGCM(self._channels[sender]).decrypt(
                    _nonce(sender), box, _aad(self.round, sender, self.id)
                )
            except (InvalidTag, KeyError) as exc:
                raise SecAggError(f"client {self.id}: shares from {sender} do not decrypt") from exc
            share = np.frombuffer(plain, dtype="<u4").astype(np.int64).reshape(-1, shamir.WORDS)
            self._store(sender, share)
        if not weight >= 0 or not math.isfinite(weight):
            raise SecAggError(f"weight must be finite and >= 0, got {weight}")
        x = encode(np.asarray(update, dtype=np.float64) * weight, self.scale, len(u2))
        masks = _MaskAccumulator(x)
        masks.add(self._self_seed)
        for v in u2:
            if v > self.id:
                masks.add(self._mask_seeds[v])
            elif v < self.id:
                masks.subtract(self._mask_seeds[v])
        return MaskedInput(round=self.round, sender=self.id, weight=weight, masked=masks.total)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Step 4: reveal b-shares of survivors and pair-seed shares of the dropped, never both."""
        self._advance(3, "unmask")
        survivors, dropped = set(request.survivors), set(request.dropped)
        if request.round != self.round or survivors & dropped:
            raise SecAggError(f"client {self.id}: inconsistent unmask request")
        if survivors | dropped != set(self._u2) or self.id not in survivors:
            raise SecAggError(f"client {self.id}: survivors and dropped must partition U2")
        if len(survivors) < self.roster.threshold:
            raise SecAggAborted(
                SecAggFailure(
                    round=self.round,
                    stage="unmask",
                    available=len(survivors),
                    threshold=self.roster.threshold,
                    reason=f"client {self.id} refuses: fewer survivors than the threshold",
                )
            )
        owners = tuple(sorted(survivors))
        pairs = tuple((min(u, v), max(u, v)) for u in sorted(dropped) for v in sorted(survivors))
        return UnmaskResponse(
            round=self.round,
            sender=self.id,
            self_owners=owners,
            self_shares=np.array([self._dealt[u][0] for u in owners]).reshape(-1, shamir.WORDS),
            pairs=pairs,
            pair_shares=np.array([self._pair_share(*p) for p in pairs], dtype=np.int64).reshape(
                -1, shamir.WORDS
            ),
        )


# --------------------------------------------------------------------------- server


class SecAggServer:
    """The aggregator's side of a round: routes messages, then rebuilds masks and unmasks."""

    def __init__(self, roster: Roster, *, scale: float, verifier: Verifier | None = None) -> None:
        self.roster = roster
        self.round = roster.round
        self.threshold = roster.threshold
        self.scale = scale
        self._verifier = verifier or Verifier()
        self.rejected: dict[int, str] = {}  # client -> why its message was dropped
        self._self_commit: dict[int, bytes] = {}
        self._pair_commit: dict[tuple[int, int], bytes] = {}
        self.u1: tuple[int, ...] = ()
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self._inputs: dict[int, MaskedInput] = {}
        self._size: int | None = None

    def _need(self, stage: str, available: int, reason: str) -> None:
        if available < self.threshold:
            raise SecAggAborted(
                SecAggFailure(
                    round=self.round,
                    stage=stage,
                    available=available,
                    threshold=self.threshold,
                    reason=reason,
                )
            )

    def receive_key_exchanges(self, messages: Sequence[KeyExchange]) -> tuple[KeyExchange, ...]:
        """Check each exchange once; the valid ones (U1) go to every client of U1.

        Valid: from a participant, once; a ciphertext to every higher participant, each
        1088 bytes and matching its digest; the ML-DSA-65 signature over the digests and
        commitments verifies under the sender's registered key. Any other is dropped with
        the reason in `rejected` (its sender is not in U1, so no pair key of it is used).
        """
        valid: dict[int, KeyExchange] = {}
        participants = set(self.roster.participants)
        for m in messages:
            expected = tuple(v for v in self.roster.participants if v > m.sender)
            if m.round != self.round or m.sender not in participants or m.sender in valid:
                self.rejected[m.sender] = "not a participant of this round, or a duplicate"
                continue
            if m.recipients != expected or not (
                len(m.ciphertexts) == len(m.digests) == len(m.pair_commitments) == len(expected)
            ):
                self.rejected[m.sender] = "key exchange does not address every higher participant"
                continue
            if any(
                len(c) != KEM_CIPHERTEXT_BYTES or _digest(c) != d
                for c, d in zip(m.ciphertexts, m.digests, strict=True)
            ):
                self.rejected[m.sender] = "a ciphertext does not match its signed digest"
                continue
            try:
                self._verifier.verify(
                    self.roster.signing_keys[m.sender], m.signed_message(), m.signature, CTX_SECAGG
                )
            except SignatureError as exc:
                self.rejected[m.sender] = f"bad signature: {exc}"
                continue
            valid[m.sender] = m
        self.u1 = tuple(sorted(valid))
        self._need("key_exchange", len(self.u1), "too few key exchanges arrived")
        for u, m in valid.items():
            self._self_commit[u] = m.self_commitment
            for v, c in zip(m.recipients, m.pair_commitments, strict=True):
                self._pair_commit[(u, v)] = c
        return tuple(valid[u] for u in self.u1)

    def route_shares(self, bundles: Sequence[ShareBundle]) -> dict[int, ShareDelivery]:
        """Keep bundles from U1 that address all of U1 (U2); one delivery per member of U2."""
        valid: dict[int, ShareBundle] = {}
        for b in bundles:
            if b.round != self.round or b.sender not in self.u1 or b.sender in valid:
                self.rejected[b.sender] = "share bundle from outside U1, or a duplicate"
            elif set(b.holders) != set(self.u1) - {b.sender} or len(b.boxes) != len(b.holders):
                self.rejected[b.sender] = "share bundle does not address every member of U1"
            else:
                valid[b.sender] = b
        self.u2 = tuple(sorted(valid))
        self._need("share", len(self.u2), "too few clients shared their keys")
        inbox: dict[int, list[tuple[int, bytes]]] = {h: [] for h in self.u2}
        for sender in self.u2:
            bundle = valid[sender]
            for holder, box in zip(bundle.holders, bundle.boxes, strict=True):
                if holder in inbox:
                    inbox[holder].append((sender, box))
        return {
            h: ShareDelivery(
                round=self.round,
                holder=h,
                u2=self.u2,
                senders=tuple(s for s, _ in inbox[h]),
                boxes=tuple(b for _, b in inbox[h]),
            )
            for h in self.u2
        }

    def collect_masked(self, inputs: Sequence[MaskedInput]) -> UnmaskRequest:
        """Keep well-formed masked inputs from U2 (U3); ask U3 for the shares that unmask."""
        for m in inputs:
            masked = m.masked
            if m.round != self.round or m.sender not in self.u2 or m.sender in self._inputs:
                self.rejected[m.sender] = "masked input from outside U2, or a duplicate"
            elif masked.dtype != np.uint32 or masked.ndim != 1:
                self.rejected[m.sender] = f"masked input is not a uint32 vector ({masked.dtype})"
            elif self._size is not None and masked.size != self._size:
                self.rejected[m.sender] = f"masked input has {masked.size} words, not {self._size}"
            else:
                self._size = masked.size
                self._inputs[m.sender] = m
        self.u3 = tuple(sorted(self._inputs))
        self._need("mask", len(self.u3), "too few masked inputs arrived")
        dropped = tuple(u for u in self.u2 if u not in self._inputs)
        return UnmaskRequest(round=self.round, survivors=self.u3, dropped=dropped)

    def _rebuild(
        self,
        wanted: Sequence[object],
        shares: Mapping[int, Mapping[object, np.ndarray]],
        commitments: Sequence[bytes],
    ) -> list[bytes]:
        """Seeds of `wanted` from the first t responders' shares, checked against commitments."""
        responders = sorted(shares)
        chosen = responders[: self.threshold]
        stacked = np.stack(
            [np.stack([shares[r][key] for key in wanted]) for r in chosen]
        )  # (t, len(wanted), 16)
        try:
            seeds = shamir.reconstruct([_point(r) for r in chosen], stacked, self.threshold)
        except shamir.ShamirError as exc:
            self._fail(len(responders), f"shares are inconsistent ({exc})")
        out = []
        for key, seed, expected in zip(wanted, seeds, commitments, strict=True):
            seed_bytes = seed.tobytes()
            if commit(seed_bytes) != expected:
                self._fail(len(responders), f"rebuilt seed of {key} does not match its commitment")
            out.append(seed_bytes)
        return out

    def _fail(self, available: int, reason: str) -> NoReturn:
        raise SecAggAborted(
            SecAggFailure(
                round=self.round,
                stage="unmask",
                available=available,
                threshold=self.threshold,
                reason=reason,
            )
        )

    def finish(self, responses: Sequence[UnmaskResponse]) -> SecAggResult:
        """Rebuild self-mask seeds of U3 and pair seeds of the dropped; unmask the sum."""
        dropped = tuple(u for u in self.u2 if u not in self._inputs)
        owners = self.u3
        pairs = tuple((min(u, v), max(u, v)) for u in dropped for v in self.u3)
        self_shares: dict[int, dict[object, np.ndarray]] = {}
        pair_shares: dict[int, dict[object, np.ndarray]] = {}
        for r in responses:
            if r.round != self.round or r.sender not in self.u3 or r.sender in self_shares:
                self.rejected[r.sender] = "unmask response from outside U3, or a duplicate"
                continue
            if r.self_owners != owners or r.pairs != pairs:
                self.rejected[r.sender] = "unmask response answers a different request"
                continue
            if r.self_shares.shape != (len(owners), shamir.WORDS) or r.pair_shares.shape != (
                len(pairs),
                shamir.WORDS,
            ):
                self.rejected[r.sender] = "unmask response has malformed shares"
                continue
            self_shares[r.sender] = dict(zip(owners, r.self_shares, strict=True))
            pair_shares[r.sender] = dict(zip(pairs, r.pair_shares, strict=True))
        self._need("unmask", len(self_shares), "too few survivors answered the unmask request")
        self_seeds = self._rebuild(owners, self_shares, [self._self_commit[u] for u in owners])
        pair_seeds = (
            self._rebuild(pairs, pair_shares, [self._pair_commit[p] for p in pairs])
            if pairs
            else []
        )
        total = np.zeros(self._size or 0, dtype=np.uint32)
        for u in self.u3:
            total += self._inputs[u].masked
        masks = _MaskAccumulator(total)
        for seed in self_seeds:
            masks.subtract(seed)
        dropped_set = set(dropped)
        for (low, _high), seed in zip(pairs, pair_seeds, strict=True):
            # the survivor added +PRG(s) if it is the low end, -PRG(s) if the high end
            if low in dropped_set:
                masks.add(seed)  # survivor `high` subtracted it
            else:
                masks.subtract(seed)  # survivor `low` added it
        return SecAggResult(
            round=self.round,
            included=self.u3,
            dropped=dropped,
            total=decode(masks.total, self.scale),
            fixed_point_total=masks.total,
            weight=float(sum(self._inputs[u].weight for u in self.u3)),
        )


__all__ = [
    "CTX_SECAGG",
    "KEM_PUBLIC_KEY_BYTES",
    "ROBUST_RULES",
    "KeyExchange",
    "MaskedInput",
    "Roster",
    "SecAggAborted",
    "SecAggClient",
    "SecAggConfig",
    "SecAggError",
    "SecAggFailure",
    "SecAggResult",
    "SecAggServer",
    "ShareBundle",
    "ShareDelivery",
    "UnmaskRequest",
    "UnmaskResponse",
    "check_rule_compatible",
    "check_secagg_config",
    "commit",
    "decode",
    "digest_carrier",
    "encode",
    "kem_private_key",
    "kem_public_key",
    "kem_seed",
    "masked_digest",
    "prg_words",
    "round_secret",
    "threshold_count",
]
