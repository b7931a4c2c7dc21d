"""Typed messages that cross actor boundaries in a round.

The driver sends a `ClientTask` per sampled client (in batches, one runner's
clients at a time); a client runner answers with a `ClientUpdate`, or a
`ClientFailure` is recorded (a raised error, a dead actor, a missed deadline)
so that a failure is data, not an exception that tears the round down.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ledger.records import Update, UpdatePath
from quantum.config import QuantumConfig


class ClientTask(BaseModel):
    """Train client `client_id` in round `round` with the given seed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: int = Field(ge=0)
    round: int = Field(ge=0)
    seed: int = Field(ge=0)
    path: Literal["classical", "quantum"] = "classical"  # the scheduler's assignment (Eq. 9)
    resource: str | None = None  # the quantum resource a quantum task runs on
    quantum: QuantumConfig | None = None  # quantum path: the resource's executor, noise, shots
    job_failure: str | None = None  # the resource's simulated job failure this round, if any
    fallback: str | None = None  # classical because its resource was not available: why
    layers_active: int | None = None  # quantum path: train only the first L_k layers
    probe: bool = False  # measure the update's probe-loss gain (exact simulation)


class ClientUpdate(BaseModel):
    """A client's answer: its update Delta w_k and how training went."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    client_id: int
    round: int
    num_samples: int = Field(ge=0)
    loss: float
    delta: np.ndarray  # (P,) float32
    seconds: float = Field(ge=0.0)
    record: Update | None = None  # the signed ledger record of this update
    sign_seconds: float = Field(0.0, ge=0.0)
    path: UpdatePath = "classical"  # where it was computed; "fallback": quantum job failed
    fallback_reason: str | None = None  # why a quantum task ran classically
    noise_variance: float = Field(0.0, ge=0.0)  # est. per-parameter variance of quantum noise
    resource: str | None = None  # the quantum resource it ran on (or failed on)
    probe_gain: float | None = None  # L(w_t) - L(w_t + delta) on a probe batch, exact
    trained: np.ndarray | None = None  # (P,) bool: the entries it trained (None: all)
    circuits: int = Field(0, ge=0)  # quantum circuits its training ran (mitigation included)
    shots: int = Field(0, ge=0)
    extra_circuits: int = Field(0, ge=0)  # of which error mitigation added
    extra_shots: int = Field(0, ge=0)

    @property
    def nbytes(self) -> int:
        """Bytes of the update payload sent to the server."""
        return int(self.delta.nbytes)


class ClientFailure(BaseModel):
    """A sampled client that produced no update this round, and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: int
    round: int
    reason: str


class TrainedBatch(BaseModel):
    """A runner's answer to a batch of tasks: the updates, and the clients that failed.

    The driver sends each runner its clients in a few batches rather than one call per
    client; a batch is also the unit the ledger keeper admits and the aggregator reads
    from the object store, so it is serialised once, by the runner.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    updates: tuple[ClientUpdate, ...] = ()
    failures: tuple[ClientFailure, ...] = ()


def error_reason(exc: BaseException) -> str:
    """How a failure's reason names an error: ``"<type>: <message>"``, at most 500 chars."""
    return f"{type(exc).__name__}: {exc}"[:500]
