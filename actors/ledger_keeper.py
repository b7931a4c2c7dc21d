"""Ray actor shell around `ledger.keeper.LedgerKeeper` (all validators in one process)."""

from __future__ import annotations

import numpy as np
import ray

from federated.messages import ClientUpdate
from federated.sampling import sample_clients
from ledger.keeper import LedgerKeeper, RoundPlan
from ledger.records import Rejection


@ray.remote(num_cpus=0)
class LedgerKeeperActor:
    """Owns the run's ledger file; updates arrive as object refs (resolved by Ray)."""

    def __init__(self, path, **kwargs):
        self._keeper = LedgerKeeper(path, **kwargs)

    def backend(self) -> str:
        return self._keeper.backend

    def open_round(self, round_: int, n_clients: int, per_round: int) -> RoundPlan:
        return self._keeper.open_round(round_, n_clients, per_round, sample_clients)

    def admit(self, *updates: ClientUpdate) -> tuple[list[int], list[Rejection], float]:
        return self._keeper.admit([(u.record, u.delta) for u in updates])

    def close_round(self, round_: int, aggregate: np.ndarray, metrics: dict[str, float]) -> int:
        return self._keeper.close_round(round_, aggregate, metrics)

    def head(self) -> tuple[int, bytes]:
        return self._keeper.head

    def close(self) -> None:
        self._keeper.close()
