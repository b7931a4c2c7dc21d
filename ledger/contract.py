"""The update validation rules ("contract"): which client updates a round may aggregate.

An update (the signed `ledger.records.Update` plus the delta array it describes) is
accepted only if every rule below passes. `Contract.check` applies them in this order and
raises `UpdateRejected` with the FIRST rule that fails:

==  =================  ===========================================================  ======
#   rule               passes when                                                  cost
==  =================  ===========================================================  ======
1   ``unregistered``   the client id has a public key in the registry               O(1)
2   ``not_sampled``    the client was sampled for the open round                    O(1)
3   ``wrong_round``    ``update.round`` is the open round                           O(1)
4   ``replayed_nonce`` (client, nonce) was never burned in this run, and the client  O(1)
                       has no accepted update in the open round yet
5   ``bad_signature``  the ML-DSA-65 signature verifies over                        1 verify
                       ``update_signing_payload(update, run_id)`` under
                       ``CTX_UPDATE`` with the client's registered key
6   ``bad_signature``  ``update.delta_digest == weights_digest(delta)``: the signed  O(P)
                       digest binds the delta received (there is no
                       ``digest_mismatch`` rule in `ledger.records.RejectionRule`,
                       so a delta that is not the signed one is a bad signature:
                       the signature does not cover it; the detail says which; so
                       is a delta that is not a real-valued numpy array)
7   ``shape_mismatch`` the delta is a real-valued array of shape ``(num_params,)``  O(1)
8   ``non_finite``     every value is finite                                        O(P)
9   ``norm_bound``     ``||delta||_2 <= norm_bound`` (float64; no bound when None)  O(P)
==  =================  ===========================================================  ======

The O(1) header checks (1-4) run before the signature; the content checks (7-9) run
after authentication (5-6), so a content rejection is always attributed to a client that
really signed that delta, and a forger cannot make the ledger blame an honest client for
a NaN or oversized update.

Nonces. A nonce is burned per client, ``(client_id, nonce)``, for the whole run, and only
once the update is authenticated (rules 5 and 6 passed): an accepted update, or one
rejected by a content rule (7-9, the client signed it, so a copy is a replay). A forged
update that borrows an honest client's nonce fails rule 5 and burns nothing, so the
honest update carrying that nonce is still accepted. Each client contributes at most one
accepted update per round; a second one (another nonce) is refused as ``replayed_nonce``
(detail: "second update"), since `RejectionRule` has no dedicated literal.

A `Rejection` records the open round (the round in which the update was refused), the
client id and nonce the update claims, the rule and a detail text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final, get_args

import numpy as np

from ledger.crypto import CTX_UPDATE, SignatureError, Verifier
from ledger.encoding import weights_digest
from ledger.records import (
    Rejection,
    RejectionRule,
    Transaction,
    Update,
    update_signing_payload,
)
from qfl.errors import QflError

__all__ = [
    "AUTHENTICATED_RULES",
    "RULE_ORDER",
    "Contract",
    "ContractError",
    "NonceKey",
    "UpdateRejected",
    "burned_nonces",
    "check_update_signature",
    "update_signature_check",
]

# The order in which `Contract.check` applies the rules: the Rejection literal's order.
RULE_ORDER: Final[tuple[str, ...]] = get_args(RejectionRule)
# Rules checked after the update was authenticated: such a rejection burns the nonce.
AUTHENTICATED_RULES: Final = frozenset({"shape_mismatch", "non_finite", "norm_bound"})

NonceKey = tuple[int, bytes]  # (client id, nonce): the unit a nonce is burned in


class ContractError(QflError):
    """The contract is used wrongly (no open round, bad registry or bound)."""


class UpdateRejected(QflError):
    """An update fails a validation rule; `rule` is a `RejectionRule`, `detail` says why."""

    def __init__(self, rule: RejectionRule, detail: str):
        if rule not in RULE_ORDER:
            raise ValueError(f"unknown rejection rule {rule!r}")
        super().__init__(f"{rule}: {detail}")
        self.rule: RejectionRule = rule
        self.detail = detail


def check_update_signature(
    verifier: Verifier, registry: Mapping[int, bytes], update: Update, run_id: str
) -> None:
    """Rules 1 and 5: raise `UpdateRejected` unless `update` is signed by its registered client."""
    public_key = registry.get(update.client_id)
    if public_key is None:
        raise UpdateRejected("unregistered", f"client {update.client_id} has no registered key")
    try:
        verifier.verify(
            public_key, update_signing_payload(update, run_id), update.signature, CTX_UPDATE
        )
    except SignatureError as exc:
        raise UpdateRejected("bad_signature", f"client {update.client_id}: {exc}") from exc


def update_signature_check(
    verifier: Verifier, registry: Mapping[int, bytes], run_id: str
) -> Callable[[Sequence[Transaction]], None]:
    """A transaction check (for `ledger.consensus`) that verifies every `Update`'s signature.

    The returned callable raises `UpdateRejected` for the first update that is unregistered
    or not signed by its client; other transaction kinds pass.
    """
    keys = dict(registry)

    def check(transactions: Sequence[Transaction]) -> None:
        for tx in transactions:
            if isinstance(tx, Update):
                check_update_signature(verifier, keys, tx, run_id)

    return check


def burned_nonces(transactions: Iterable[Transaction]) -> set[NonceKey]:
    """The (client, nonce) pairs that recorded transactions burned: for `Contract(burned=)`.

    Every `Update`, and every `Rejection` by a content rule (`AUTHENTICATED_RULES`), as
    `Contract.admit` burns them; feed it a verified ledger's transactions on resume.
    """
    burned: set[NonceKey] = set()
    for tx in transactions:
        if isinstance(tx, Update) or (isinstance(tx, Rejection) and tx.rule in AUTHENTICATED_RULES):
            burned.add((tx.client_id, tx.nonce))
    return burned


class Contract:
    """The validation rules of one run: a registry of client keys and the burned nonces.

    Pure: no I/O, no clock, no randomness. Its only state is the open round, the clients
    accepted in it, and the set of burned ``(client_id, nonce)`` pairs; `burned` restores
    that set on resume (from the ledger's Update records and content rejections).
    """

    def __init__(
        self,
        run_id: str,
        registry: Mapping[int, bytes],
        *,
        num_params: int,
        norm_bound: float | None,
        verifier: Verifier,
        burned: Iterable[NonceKey] = (),
    ):
        if not isinstance(run_id, str) or not run_id:
            raise ContractError("run_id must be a non-empty string")
        if isinstance(num_params, bool) or not isinstance(num_params, int) or num_params < 1:
            raise ContractError(f"num_params must be an int >= 1, got {num_params!r}")
        if norm_bound is not None and not (math.isfinite(norm_bound) and norm_bound > 0):
            raise ContractError(
                f"norm_bound must be a finite number > 0 or None, got {norm_bound!r}"
            )
        self.run_id = run_id
        self.registry: Mapping[int, bytes] = dict(registry)
        self.num_params = num_params
        self.norm_bound = None if norm_bound is None else float(norm_bound)
        self.verifier = verifier
        self._burned: set[NonceKey] = {(int(c), bytes(n)) for c, n in burned}
        self._round: int | None = None
        self._sampled: frozenset[int] = frozenset()
        self._accepted: set[int] = set()

    # ----------------------------------------------------------------- rounds

    @property
    def round(self) -> int | None:
        """The open round (None before the first `open_round`)."""
        return self._round

    @property
    def sampled(self) -> frozenset[int]:
        """The clients sampled for the open round."""
        return self._sampled

    def open_round(self, round: int, sampled: Sequence[int]) -> None:
        """Start accepting updates for `round` from the `sampled` clients."""
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise ContractError(f"round must be an int >= 0, got {round!r}")
        if self._round is not None and round <= self._round:
            raise ContractError(f"round {round} does not follow the open round {self._round}")
        self._round = round
        self._sampled = frozenset(int(c) for c in sampled)
        self._accepted = set()

    def is_burned(self, client_id: int, nonce: bytes) -> bool:
        """Whether (client_id, nonce) was already used by an authenticated update."""
        return (client_id, nonce) in self._burned

    # ----------------------------------------------------------------- the rules

    def check(self, update: Update, delta: np.ndarray) -> None:
        """Return None if `update` with `delta` passes every rule; else raise `UpdateRejected`.

        Raises the FIRST failing rule in the module's order. Changes no state (see `admit`).
        """
        self._check_header(update)
        self._check_authentic(update, delta)
        self._check_content(delta)

    def _check_header(self, update: Update) -> None:
        if self._round is None:
            raise ContractError("no round is open: call open_round first")
        if not isinstance(update, Update):
            raise ContractError(f"expected an Update, got {type(update).__name__}")
        client = update.client_id
        if client not in self.registry:
            raise UpdateRejected("unregistered", f"client {client} has no registered key")
        if client not in self._sampled:
            raise UpdateRejected("not_sampled", f"client {client} not sampled in {self._round}")
        if update.round != self._round:
            raise UpdateRejected(
                "wrong_round", f"update is for round {update.round}, open round is {self._round}"
            )
        if (client, update.nonce) in self._burned:
            raise UpdateRejected("replayed_nonce", f"nonce {update.nonce.hex()} already used")
        if client in self._accepted:
            raise UpdateRejected(
                "replayed_nonce", f"second update from client {client} in round {self._round}"
            )

    def _check_authentic(self, update: Update, delta: np.ndarray) -> None:
        check_update_signature(self.verifier, self.registry, update, self.run_id)
        if not _is_real_array(delta):
            raise UpdateRejected("bad_signature", "the delta is not a real-valued numpy array")
        if weights_digest(delta) != update.delta_digest:
            raise UpdateRejected(
                "bad_signature", "digest mismatch: the delta is not the one the client signed"
            )

    def _check_content(self, delta: np.ndarray) -> None:
        if delta.shape != (self.num_params,):
            raise UpdateRejected(
                "shape_mismatch", f"delta shape {delta.shape} != model ({self.num_params},)"
            )
        values = delta.astype(np.float64, copy=False)
        if not np.isfinite(values).all():
            raise UpdateRejected("non_finite", f"{int((~np.isfinite(values)).sum())} values")
        if self.norm_bound is not None:
            norm = float(np.linalg.norm(values))
            if not norm <= self.norm_bound:
                raise UpdateRejected("norm_bound", f"||delta|| = {norm:.6g} > {self.norm_bound:g}")

    # ----------------------------------------------------------------- admitting

    def admit(
        self, updates: Iterable[tuple[Update, np.ndarray]], *, workers: int = 1
    ) -> tuple[list[tuple[Update, np.ndarray]], list[Rejection]]:
        """Check `updates` in the given order: (accepted (update, delta) pairs, rejections).

        An accepted update burns its nonce and its client's slot in the round, so a later
        copy in the same batch or any later round is a replay. A rejected update is never
        returned as accepted; it burns its nonce only if it was authenticated (its
        rule is in `AUTHENTICATED_RULES`).

        With `workers > 1` the authentication of every update (rules 5 and 6: the
        signature and the delta digest, which depend on nothing but the update and the
        registry) runs first on that many threads (ML-DSA verification and SHA3 release
        the GIL); the rules are then applied in order as with one worker, so the result
        is the same.
        """
        updates = list(updates)
        authentic = self._authenticate(updates, workers) if workers > 1 else None
        accepted: list[tuple[Update, np.ndarray]] = []
        rejections: list[Rejection] = []
        for i, (update, delta) in enumerate(updates):
            try:
                if authentic is None:
                    self.check(update, delta)
                else:
                    self._check_header(update)
                    if authentic[i] is not None:
                        raise authentic[i]
                    self._check_content(delta)
            except UpdateRejected as exc:
                rejections.append(self._rejection(update, exc))
                if exc.rule in AUTHENTICATED_RULES:
                    self._burned.add((update.client_id, update.nonce))
                continue
            self._burned.add((update.client_id, update.nonce))
            self._accepted.add(update.client_id)
            accepted.append((update, delta))
        return accepted, rejections

    def _authenticate(
        self, updates: Sequence[tuple[Update, np.ndarray]], workers: int
    ) -> list[UpdateRejected | None]:
        """Rules 5-6 for every update on `workers` threads: None where they pass."""

        def authenticate(item: tuple[Update, np.ndarray]) -> UpdateRejected | None:
            update, delta = item
            if not isinstance(update, Update) or update.client_id not in self.registry:
                return None  # the header rules reject it first
            try:
                self._check_authentic(update, delta)
            except UpdateRejected as exc:
                return exc
            return None

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(authenticate, updates))

    def _rejection(self, update: Update, exc: UpdateRejected) -> Rejection:
        assert self._round is not None  # check() raised ContractError otherwise
        return Rejection(
            client_id=update.client_id,
            round=self._round,
            nonce=update.nonce,
            rule=exc.rule,
            detail=exc.detail,
        )


def _is_real_array(delta: object) -> bool:
    return isinstance(delta, np.ndarray) and (
        np.issubdtype(delta.dtype, np.floating) or np.issubdtype(delta.dtype, np.integer)
    )
