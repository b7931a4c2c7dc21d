"""Each ledger validator as its own Ray actor, and the keeper's handle on them.

`ValidatorActor` is a thin shell over `ledger.consensus.Validator` (built by
`ledger.keeper.build_validator`: its own signer, QRNG and verifier).
`RayValidatorHost` is the `ledger.keeper.ValidatorHost` the keeper actor uses: it
starts the validators, publishes a value once with `ray.put`, and resolves a phase's
calls together with one `ray.wait` under the per-call timeout. A validator that died
(`RayActorError`) or did not answer in time comes back as that exception, which the
pure `Consensus` counts as crashed; an error the validator itself raised comes back
unwrapped from Ray's `RayTaskError` (so an `InvalidProposal` is a refusal to vote).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError

from ledger.consensus import Commitment, Reveal, Tamper, Vote
from ledger.keeper import ValidatorSpec, build_validator
from ledger.records import Block, BlockHeader, Transaction
from qfl.errors import QflError


class ValidatorStartError(QflError):
    """A validator actor could not be started."""


@ray.remote(num_cpus=0)
class ValidatorActor:
    """One validator; `tamper` is the test-only Byzantine hook (no configuration sets it)."""

    def __init__(
        self, spec: ValidatorSpec, registry: Mapping[int, bytes], tamper: Tamper | None = None
    ):
        self._validator = build_validator(spec, registry, tamper=tamper)

    def ready(self) -> int:
        return self._validator.index

    def commit(self, height: int) -> Commitment:
        """Commit to `height`'s beacon value; heights below it are done, forget them."""
        self._validator.forget_below(height)
        return self._validator.commit(height)

    def reveal(self, height: int) -> Reveal:
        return self._validator.reveal(height)

    def reveal_and_commit(self, height: int) -> tuple[Reveal, Commitment]:
        """Reveal `height`, commit to the next one; heights below it are done, forget them."""
        self._validator.forget_below(height)
        return self._validator.reveal_and_commit(height)

    def precheck(self, transactions: tuple[Transaction, ...]) -> int:
        return self._validator.precheck(transactions)

    def propose(
        self,
        height: int,
        prev_hash: bytes,
        round_: int,
        transactions: tuple[Transaction, ...],
        attempt: int,
        commitments: tuple[Commitment, ...],
        reveals: tuple[Reveal, ...],
    ) -> Block | BlockHeader:
        """Its block, or only the block's header when it holds exactly `transactions`
        (they need not travel back: the keeper has them)."""
        block = self._validator.propose(
            height=height,
            prev_hash=prev_hash,
            round=round_,
            transactions=transactions,
            attempt=attempt,
            commitments=commitments,
            reveals=reveals,
        )
        given = block.transactions
        if len(given) == len(transactions) and all(
            a is b for a, b in zip(given, transactions, strict=True)
        ):
            return block.header
        return block

    def endorse(
        self,
        block: Block | BlockHeader,
        transactions: tuple[Transaction, ...] | None,
        height: int,
        prev_hash: bytes,
        attempt: int,
        expected: tuple[Transaction, ...] | None,
        commitments: tuple[Commitment, ...],
        reveals: tuple[Reveal, ...],
    ) -> Vote:
        return self._validator.endorse(
            block,
            transactions=transactions,
            height=height,
            prev_hash=prev_hash,
            attempt=attempt,
            expected=expected,
            commitments=commitments,
            reveals=reveals,
        )


class RemoteValidator:
    """The keeper's handle on one validator actor: `Validator`'s calls, returning refs."""

    def __init__(self, index: int, actor: ray.actor.ActorHandle):
        self.index = index
        self.actor = actor

    def commit(self, height: int) -> ray.ObjectRef:
        return self.actor.commit.remote(height)

    def reveal(self, height: int) -> ray.ObjectRef:
        return self.actor.reveal.remote(height)

    def reveal_and_commit(self, height: int) -> ray.ObjectRef:
        return self.actor.reveal_and_commit.remote(height)

    def precheck(self, transactions) -> ray.ObjectRef:
        return self.actor.precheck.remote(transactions)

    def propose(
        self, *, height, prev_hash, round, transactions, attempt, commitments, reveals
    ) -> ray.ObjectRef:
        return self.actor.propose.remote(
            height, prev_hash, round, transactions, attempt, commitments, reveals
        )

    def endorse(
        self,
        block,
        *,
        transactions,
        height,
        prev_hash,
        attempt,
        check_transactions=None,
        expected=None,
        commitments,
        reveals,
    ) -> ray.ObjectRef:
        if check_transactions is not None:
            raise ValueError("a validator actor uses its own transaction check")
        return self.actor.endorse.remote(
            block, transactions, height, prev_hash, attempt, expected, commitments, reveals
        )


def resolve_calls(pending: Sequence[ray.ObjectRef], timeout_s: float) -> list[Any]:
    """Each pending call's value, or the exception it ended with, in order.

    One `ray.wait` for all of them, `timeout_s` from now: a call still unanswered then is
    a `GetTimeoutError`. A validator's own error is unwrapped from `RayTaskError` to its
    cause; a dead actor is its `RayActorError`.
    """
    if not pending:
        return []
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    done = set(ready)
    out: list[Any] = []
    for ref in pending:
        if ref not in done:
            out.append(GetTimeoutError(f"no answer from the validator within {timeout_s} s"))
            continue
        try:
            out.append(ray.get(ref))
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            out.append(cause if isinstance(cause, Exception) else exc)
        except RayError as exc:  # RayActorError (died), ObjectLostError, ...
            out.append(exc)
    return out


class RayValidatorHost:
    """Starts one `ValidatorActor` per validator (`ledger.keeper.ValidatorHost`).

    `timeout_s` bounds every phase of consensus (one call per validator); starting the
    actors gets `start_timeout_s` (imports and the QRNG's simulator take a while).
    """

    def __init__(self, timeout_s: float, *, start_timeout_s: float = 300.0):
        self.timeout_s = timeout_s
        self.start_timeout_s = max(start_timeout_s, timeout_s)
        self.actors: list[ray.actor.ActorHandle] = []
        self._posted: list[ray.ObjectRef] = []  # calls nobody waits for (see `post`)

    def start(
        self,
        specs: Sequence[ValidatorSpec],
        registry: Mapping[int, bytes],
        tamper: Mapping[int, Tamper] | None = None,
    ) -> list[RemoteValidator]:
        tamper = tamper or {}
        registry_ref = ray.put(dict(registry))  # one copy in the object store for all
        self.actors = [
            ValidatorActor.remote(spec, registry_ref, tamper.get(spec.index)) for spec in specs
        ]
        started = resolve_calls([a.ready.remote() for a in self.actors], self.start_timeout_s)
        failed = [
            f"{spec.index}: {result}"
            for spec, result in zip(specs, started, strict=True)
            if isinstance(result, BaseException)
        ]
        if failed:
            self.stop()
            raise ValidatorStartError("validator actors failed to start: " + "; ".join(failed))
        return [RemoteValidator(s.index, a) for s, a in zip(specs, self.actors, strict=True)]

    def resolve(self, pending: list[Any]) -> list[Any]:
        self._reap()
        return resolve_calls(pending, self.timeout_s)

    def share(self, value: Any) -> ray.ObjectRef:
        return ray.put(value)

    def post(self, pending: list[Any]) -> None:
        """Calls whose answers nobody needs (e.g. prechecks): their errors are dropped
        (a dead validator is found by the next phase that needs it)."""
        self._reap()
        self._posted.extend(pending)

    def _reap(self) -> None:
        if not self._posted:
            return
        done, self._posted = ray.wait(self._posted, num_returns=len(self._posted), timeout=0)
        for ref in done:
            with contextlib.suppress(RayError):  # consume the error: it is not news
                ray.get(ref)

    def stop(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors, self._posted = [], []
