"""Ray actor shell around `federated.client.ClientRunner`.

Besides plain training (`train_batch`: a batch of clients in one call; `train`: one), the
actor serves the client steps of a secure-aggregation round (`secure_*`, driven by
pipelines/secure_round.py); each client's protocol state stays in this actor for the round.
`inject_fault` is a test-only hook (no configuration reaches it) that makes a client's
step fail, or kills the whole runner, at a chosen stage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import ray
import torch

from federated.client import (
    ClientRunner,
    SecAggSpec,
    SecureMasked,
    SecureTrained,
    SecureTrainedBatch,
    run_each,
    train_batch,
)
from federated.config import ModelConfig, TrainConfig
from federated.data import FederatedData
from federated.messages import ClientTask, ClientUpdate, TrainedBatch
from federated.secagg import (
    KeyExchange,
    Roster,
    ShareBundle,
    ShareDelivery,
    UnmaskRequest,
    UnmaskResponse,
)
from ledger.keeper import SigningSpec
from qfl.errors import TrainingError

Stage = Literal["train", "share", "mask", "unmask"]
INJECTED = "injected fault"  # the reason a client's injected failure reports


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
        self._faults: dict[tuple[int, int, str], bool] = {}  # (round, client, stage) -> kill

    def train(self, weights: np.ndarray, task: ClientTask) -> ClientUpdate:
        self._fault(task.round, task.client_id, "train")
        return self._runner.run(task, weights)

    def train_batch(self, weights: np.ndarray, tasks: Sequence[ClientTask]) -> TrainedBatch:
        """`train` each task in turn; a client that raises is a failure in the answer."""
        return train_batch(tasks, lambda task: self.train(weights, task))

    def ready(self) -> bool:
        return True

    # ------------------------------------------------------------ secure aggregation

    def secure_train(
        self, weights: np.ndarray, task: ClientTask, roster: Roster, spec: SecAggSpec
    ) -> SecureTrained:
        self._fault(task.round, task.client_id, "train")
        return self._runner.secure_train(task, weights, roster, spec)

    def secure_train_batch(
        self, weights: np.ndarray, tasks: Sequence[ClientTask], roster: Roster, spec: SecAggSpec
    ) -> SecureTrainedBatch:
        """`secure_train` each task in turn; a client that raises is a failure in the answer."""
        trained, failures = run_each(
            tasks, lambda task: self.secure_train(weights, task, roster, spec)
        )
        return SecureTrainedBatch(updates=trained, failures=failures)

    def secure_share(
        self, round_: int, exchanges: Sequence[KeyExchange], clients: Sequence[int]
    ) -> dict[int, ShareBundle | str]:
        failed = self._faulted(round_, clients, "share")
        alive = [k for k in clients if k not in failed]
        return failed | self._runner.secure_share(round_, exchanges, alive)

    def secure_mask(
        self, round_: int, deliveries: Mapping[int, ShareDelivery], weights: Mapping[int, float]
    ) -> dict[int, SecureMasked | str]:
        failed = self._faulted(round_, list(deliveries), "mask")
        alive = {k: d for k, d in deliveries.items() if k not in failed}
        return failed | self._runner.secure_mask(round_, alive, weights)

    def secure_unmask(
        self, round_: int, request: UnmaskRequest, clients: Sequence[int]
    ) -> dict[int, UnmaskResponse | str]:
        failed = self._faulted(round_, clients, "unmask")
        alive = [k for k in clients if k not in failed]
        return failed | self._runner.secure_unmask(round_, request, alive)

    def secure_end(self, round_: int) -> None:
        self._runner.secure_end(round_)

    def secure_sessions(self) -> int:
        """How many clients' secure-aggregation state this runner holds (tests)."""
        return self._runner.secure_sessions

    # ------------------------------------------------------------ test-only faults

    def inject_fault(self, round_: int, client_id: int, stage: Stage, kill: bool = False) -> None:
        """Test only: client `client_id` fails at `stage` of round `round_` (once).

        With `kill`, the whole runner process exits there instead, as a crashed machine
        would: every client it serves vanishes at that stage.
        """
        self._faults[(round_, client_id, stage)] = kill

    def _fault(self, round_: int, client_id: int, stage: str) -> None:
        key = (round_, client_id, stage)
        if key in self._faults:
            if self._faults.pop(key):
                os._exit(1)
            raise TrainingError(f"{INJECTED}: client {client_id} at {stage} of round {round_}")

    def _faulted(self, round_: int, clients: Sequence[int], stage: str) -> dict[int, str]:
        failed = {}
        for k in clients:
            try:
                self._fault(round_, k, stage)
            except TrainingError as exc:
                failed[k] = f"{type(exc).__name__}: {exc}"
        return failed
