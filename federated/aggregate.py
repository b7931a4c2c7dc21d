"""Aggregation rules as pure functions over client updates.

Each rule maps a list of update vectors Delta w_k (shape (P,)) and their
weights to one aggregated update; `apply_update` turns it into the next global
model. The paper's Eq. 6 writes w^(t+1) as the weighted sum of updates alone;
read literally that forgets w^(t), so qfl uses the standard server step
w^(t+1) = w^(t) + eta * sum_k alpha_k Delta w_k (eta = server_lr, 1 for FedAvg).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from federated.messages import ClientUpdate
from qfl.errors import TrainingError


def fedavg(deltas: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean sum_k (n_k / sum_j n_j) Delta w_k (McMahan et al. 2017).

    Summed in float64 in the given order, so the same inputs give the same bytes.
    """
    if not deltas:
        raise TrainingError("no client update to aggregate")
    if len(deltas) != len(weights):
        raise TrainingError(f"{len(deltas)} updates but {len(weights)} weights")
    shape = deltas[0].shape
    if any(d.shape != shape for d in deltas):
        raise TrainingError(f"updates differ in shape: {sorted({d.shape for d in deltas})}")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not np.isfinite(w).all() or not 0 < w.sum() < np.inf:
        raise TrainingError(f"aggregation weights must be finite, >= 0, not all 0: {w.tolist()}")
    total = np.zeros(shape, dtype=np.float64)
    for delta, share in zip(deltas, w / w.sum(), strict=True):
        total += share * delta.astype(np.float64)
    return total.astype(np.float32)


def apply_update(weights: np.ndarray, update: np.ndarray, server_lr: float = 1.0) -> np.ndarray:
    """Server step w^(t+1) = w^(t) + server_lr * update."""
    if weights.shape != update.shape:
        raise TrainingError(f"update shape {update.shape} != weights shape {weights.shape}")
    return (weights.astype(np.float64) + server_lr * update.astype(np.float64)).astype(np.float32)


def aggregate_updates(
    weights: np.ndarray,
    updates: Sequence[ClientUpdate],
    *,
    rule: str = "fedavg",
    server_lr: float = 1.0,
) -> np.ndarray:
    """Next global weights from the round's updates, taken in client-id order.

    Sorting makes the float sum independent of the order in which updates
    arrived. FedProx changes the local objective, not the server rule, so
    `fedprox` aggregates as FedAvg.
    """
    if rule not in RULES:
        raise TrainingError(f"unknown aggregation rule {rule!r} (known: {', '.join(RULES)})")
    ordered = sorted(updates, key=lambda u: u.client_id)
    delta = fedavg([u.delta for u in ordered], [u.num_samples for u in ordered])
    return apply_update(weights, delta, server_lr)


RULES = ("fedavg", "fedprox")
