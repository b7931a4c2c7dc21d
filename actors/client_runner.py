"""Ray actor shell around `federated.client.ClientRunner`."""

from __future__ import annotations

import numpy as np
import ray
import torch

from federated.client import ClientRunner
from federated.data import FederatedData
from federated.messages import ClientTask, ClientUpdate
from federated.models import ModelConfig
from federated.train import TrainConfig
from ledger.keeper import SigningSpec


@ray.remote(max_restarts=0)
class ClientRunnerActor:
    """One runner process; `data` arrives through the object store, shared read-only."""

    def __init__(
        self,
        data: FederatedData,
        model: ModelConfig,
        train: TrainConfig,
        prox_mu: float,
        torch_threads: int,
        quantum=None,
        signing: SigningSpec | None = None,
        **options,
    ):
        torch.set_num_threads(torch_threads)
        self._runner = ClientRunner(data, model, train, prox_mu, quantum, signing, **options)

    def train(self, weights: np.ndarray, task: ClientTask) -> ClientUpdate:
        return self._runner.run(task, weights)

    def ready(self) -> bool:
        return True
