"""Ray actor shell around `federated.aggregate.Aggregator` (rule + server-optimizer state)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np
import ray

from federated.aggregate import AggregationConfig, AggregationInfo, Aggregator, PrivateStep
from federated.messages import ClientUpdate, TrainedBatch


@ray.remote(num_cpus=0)
class AggregatorActor:
    """Combines a round's updates with the configured rule; updates arrive as one list.

    `config` is an `AggregationConfig`, or (older callers) a rule name with
    `server_lr`. The actor owns the server optimizer's state (FedAdam's m, v).
    """

    def __init__(
        self,
        config: AggregationConfig | str = "fedavg",
        server_lr: float = 1.0,
        *,
        quantum_mask: np.ndarray | None = None,
    ):
        if isinstance(config, str):
            config = AggregationConfig(rule=config, server_lr=server_lr)
        self._aggregator = Aggregator(config, quantum_mask)

    def aggregate(
        self,
        weights: np.ndarray,
        updates: Sequence[ClientUpdate],
        reliability: Mapping[int, float] | None = None,
    ) -> np.ndarray:
        return self._aggregator.step(weights, list(updates), reliability)[0]

    def aggregate_with_info(
        self,
        weights: np.ndarray,
        *parts: TrainedBatch,
        accepted: Collection[int] | None = None,
        reliability: Mapping[int, float] | None = None,
        private: PrivateStep | None = None,
    ) -> tuple[np.ndarray, AggregationInfo]:
        """One server step over the updates in `parts` (those of `accepted` clients).

        The round's updates come as a few parts (the runners' answers in the store, which
        the ledger keeper reads too), never one argument each: Ray serialises a task's
        arguments one by one, and a hundred of them cost several times one list. They are
        combined in client-id order, whatever parts they arrived in.
        """
        updates = sorted((u for part in parts for u in part.updates), key=_client_id)
        if accepted is not None:
            updates = [u for u in updates if u.client_id in accepted]
        return self._aggregator.step(weights, updates, reliability, private)

    def state(self) -> dict:
        return self._aggregator.optimizer.state()

    def load_state(self, state: dict) -> None:
        self._aggregator.optimizer.load_state(state)


def _client_id(update: ClientUpdate) -> int:
    return update.client_id
