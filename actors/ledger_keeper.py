"""Ray actor shell around `ledger.keeper.LedgerKeeper`.

With ``validator_placement: actors`` ("auto" on a cluster with CPUs to spare, see
`ledger.keeper.placement_for`) each validator is its own Ray actor (actors/validator.py),
created here and owned by this actor; with ``in_process`` they all live inside it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import ray

from actors.validator import RayValidatorHost
from federated.messages import TrainedBatch
from federated.sampling import sample_clients
from ledger.consensus import Decision, Tamper
from ledger.keeper import (
    LedgerConfig,
    LedgerKeeper,
    Opening,
    RoundClosed,
    RoundPlan,
    placement_for,
)
from ledger.records import Fallback, Genesis, Rejection


@ray.remote(num_cpus=0)
class LedgerKeeperActor:
    """Owns the run's ledger file; updates arrive as object refs (resolved by Ray).

    `tamper` is test-only (no configuration sets it): ``{i: f}`` makes validator i
    Byzantine, its proposals replaced by ``f(honest_block)``.
    """

    def __init__(
        self,
        path,
        *,
        config: LedgerConfig,
        tamper: Mapping[int, Tamper] | None = None,
        **kwargs,
    ):
        host = None
        placement = placement_for(  # the driver resolves "auto" with its runners' CPUs
            config.validator_placement,
            cluster_cpus=ray.cluster_resources().get("CPU", 0.0),
            runner_cpus=0.0,
            validators=config.validators,
        )
        if placement == "actors":
            host = RayValidatorHost(config.validator_timeout_s)
        self._keeper = LedgerKeeper(path, config=config, host=host, tamper=tamper, **kwargs)

    def backend(self) -> str:
        return self._keeper.backend

    def validators(self) -> list[ray.actor.ActorHandle]:
        """The validator actors, by index (empty when they run in this actor)."""
        host = self._keeper.host
        return list(host.actors) if host is not None else []

    def last_decision(self) -> Decision | None:
        """How the newest block was certified (leader, attempt, faulty validators)."""
        return self._keeper.last_decision

    def open_round(
        self, round_: int, n_clients: int, per_round: int, sample=None, assign=None
    ) -> RoundPlan:
        return self._keeper.open_round(
            round_, n_clients, per_round, sample or sample_clients, assign
        )

    def admit(self, part: TrainedBatch) -> tuple[list[int], list[Rejection], float]:
        """Validate a part of a round's updates (one object, not one ref each)."""
        return self._keeper.admit([(u.record, u.delta) for u in part.updates])

    def close_round(
        self,
        round_: int,
        aggregate: np.ndarray,
        metrics: dict[str, float],
        fallbacks: tuple[Fallback, ...] = (),
        next_round: tuple[int, int, int] | None = None,
        sample=None,
        assign=None,
        *,
        certify: bool = True,
    ) -> RoundClosed:
        """Close `round_`; `next_round` = (round, n_clients, per_round) opens it in the block.

        With `certify=False` only the height's beacon and transactions are fixed (the next
        round's plan is final): `finish` certifies it, while the driver goes on.
        """
        opening = None
        if next_round is not None:
            number, n_clients, per_round = next_round
            opening = Opening(
                round=number,
                n_clients=n_clients,
                per_round=per_round,
                sample=sample or sample_clients,
                assign=assign,
            )
        if certify:
            return self._keeper.close_round(round_, aggregate, metrics, fallbacks, opening)
        return self._keeper.begin_close(round_, aggregate, metrics, fallbacks, opening)

    def finish(self) -> int:
        """Certify and store the height `close_round(certify=False)` began; its height."""
        return self._keeper.finish()[0]

    def reopened(self) -> RoundPlan | None:
        """A resumed ledger's round that was opened and not closed, if any."""
        return self._keeper.reopened

    def genesis(self) -> Genesis:
        """The ledger's Genesis: run, validator and client keys (ML-DSA-65, ML-KEM-768)."""
        return self._keeper.genesis

    def head(self) -> tuple[int, bytes]:
        return self._keeper.head

    def close(self) -> None:
        self._keeper.close()
