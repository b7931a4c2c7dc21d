"""Ray actor shell around `federated.aggregate`."""

from __future__ import annotations

import numpy as np
import ray

from federated.aggregate import aggregate_updates
from federated.messages import ClientUpdate


@ray.remote(num_cpus=0)
class AggregatorActor:
    """Combines a round's updates with the configured rule; updates arrive as object refs."""

    def __init__(self, rule: str, server_lr: float):
        self._rule = rule
        self._server_lr = server_lr

    def aggregate(self, weights: np.ndarray, *updates: ClientUpdate) -> np.ndarray:
        return aggregate_updates(weights, updates, rule=self._rule, server_lr=self._server_lr)
