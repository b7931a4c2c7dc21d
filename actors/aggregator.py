"""Ray actor shell around `federated.aggregate.Aggregator` (rule + server-optimizer state)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import ray

from federated.aggregate import AggregationConfig, AggregationInfo, Aggregator, PrivateStep
from federated.messages import ClientUpdate


@ray.remote(num_cpus=0)
class AggregatorActor:
    """Combines a round's updates with the configured rule; updates arrive as object refs.

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
        *updates: ClientUpdate,
        reliability: Mapping[int, float] | None = None,
    ) -> np.ndarray:
        return self._aggregator.step(weights, updates, reliability)[0]

    def aggregate_with_info(
        self,
        weights: np.ndarray,
        *updates: ClientUpdate,
        reliability: Mapping[int, float] | None = None,
        private: PrivateStep | None = None,
    ) -> tuple[np.ndarray, AggregationInfo]:
        return self._aggregator.step(weights, updates, reliability, private)

    def state(self) -> dict:
        return self._aggregator.optimizer.state()

    def load_state(self, state: dict) -> None:
        self._aggregator.optimizer.load_state(state)
