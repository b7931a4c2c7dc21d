"""A client runner: serves any number of virtual clients from one copy of the data.

A runner holds the federated dataset (shared, read-only) and one model
instance; `run(task, weights)` trains the task's client from the global
weights. Thousands of registered clients therefore cost one model and no data
copies per runner; a client's local data is sliced only while it trains.
"""

from __future__ import annotations

import functools
import heapq
import time
from collections.abc import Sequence

import numpy as np

from federated.data import FederatedData
from federated.messages import ClientTask, ClientUpdate
from federated.models import ModelConfig, build_model, has_quantum_layer, reseed
from federated.train import LocalResult, TrainConfig, local_train
from ledger.crypto import Signer
from ledger.keeper import SigningSpec, client_signer, sign_update, update_nonce
from ledger.records import Update
from qfl.errors import TrainingError

SIGNER_CACHE = 4096  # ML-DSA-65 signers kept per runner (a few KB each)


class ClientRunner:
    """Trains virtual clients of `data` with one reusable model."""

    def __init__(
        self,
        data: FederatedData,
        model: ModelConfig,
        train: TrainConfig,
        prox_mu: float = 0.0,
        quantum=None,
        signing: SigningSpec | None = None,
    ):
        self._data = data
        self._signing = signing
        # keygen costs more than a signature: keep the signers of recently seen clients
        self._signer = functools.lru_cache(maxsize=SIGNER_CACHE)(self._derive_signer)
        self._train = train
        self._prox_mu = prox_mu
        self._model = build_model(
            model, data.input_shape, data.num_classes, seed=0, quantum=quantum
        )

    def run(self, task: ClientTask, weights: np.ndarray) -> ClientUpdate:
        """Train client `task.client_id` from `weights`; return its update."""
        if not 0 <= task.client_id < len(self._data.client_indices):
            raise TrainingError(f"client {task.client_id} is not registered")
        reseed(self._model, task.seed)
        result = local_train(
            self._model,
            self._data.client(task.client_id),
            weights,
            self._train,
            seed=task.seed,
            prox_mu=self._prox_mu,
        )
        start = time.perf_counter()
        record = None if self._signing is None else self._sign(task, result)
        return ClientUpdate(
            client_id=task.client_id,
            round=task.round,
            num_samples=result.num_samples,
            loss=result.loss,
            delta=result.delta,
            seconds=result.seconds,
            record=record,
            sign_seconds=time.perf_counter() - start if record is not None else 0.0,
        )

    def _sign(self, task: ClientTask, result: LocalResult) -> Update:
        spec = self._signing
        return sign_update(
            run_id=spec.run_id,
            master_secret=spec.master_secret,
            client_id=task.client_id,
            round_=task.round,
            nonce=update_nonce(spec.master_secret, task.round, task.client_id),
            delta=result.delta,
            num_examples=result.num_samples,
            path="quantum" if has_quantum_layer(self._model) else "classical",
            metrics={"loss": result.loss},
            backend=spec.backend,
            signer=self._signer(task.client_id),
        )

    def _derive_signer(self, client_id: int) -> Signer:
        spec = self._signing
        return client_signer(spec.master_secret, client_id, spec.backend)


def balance(costs: Sequence[float], workers: int) -> list[int]:
    """Assign tasks to `workers` by longest-processing-time-first; returns a worker per task.

    Greedy LPT (Graham 1969): tasks in decreasing cost go to the least-loaded
    worker, ties to the lowest index, so the plan is deterministic and its
    makespan is within 4/3 of optimal.
    """
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers}")
    loads = [(0.0, w) for w in range(workers)]
    heapq.heapify(loads)
    plan = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, worker = heapq.heappop(loads)
        plan[i] = worker
        heapq.heappush(loads, (load + costs[i], worker))
    return plan
