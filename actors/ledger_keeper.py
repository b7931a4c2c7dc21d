"""Ray actor shell around `ledger.keeper.LedgerKeeper` (all validators in one process)."""

from __future__ import annotations

import numpy as np
import ray

from federated.messages import ClientUpdate
from federated.sampling import sample_clients
from ledger.keeper import LedgerKeeper, Opening, RoundClosed, RoundPlan
from ledger.records import Fallback, Rejection


@ray.remote(num_cpus=0)
class LedgerKeeperActor:
    """Owns the run's ledger file; updates arrive as object refs (resolved by Ray)."""

    def __init__(self, path, **kwargs):
        self._keeper = LedgerKeeper(path, **kwargs)

    def backend(self) -> str:
        return self._keeper.backend

    def open_round(
        self, round_: int, n_clients: int, per_round: int, sample=None, assign=None
    ) -> RoundPlan:
        return self._keeper.open_round(
            round_, n_clients, per_round, sample or sample_clients, assign
        )

    def admit(self, updates: list[ClientUpdate]) -> tuple[list[int], list[Rejection], float]:
        """Validate a round's updates, sent as one batch (one object, not one ref each)."""
        return self._keeper.admit([(u.record, u.delta) for u in updates])

    def close_round(
        self,
        round_: int,
        aggregate: np.ndarray,
        metrics: dict[str, float],
        fallbacks: tuple[Fallback, ...] = (),
        next_round: tuple[int, int, int] | None = None,
        sample=None,
        assign=None,
    ) -> RoundClosed:
        """Close `round_`; `next_round` = (round, n_clients, per_round) opens it in the block."""
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
        return self._keeper.close_round(round_, aggregate, metrics, fallbacks, opening)

    def head(self) -> tuple[int, bytes]:
        return self._keeper.head

    def close(self) -> None:
        self._keeper.close()
