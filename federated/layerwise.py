"""Layerwise aggregation for clients whose quantum layers have different depths.

The global quantum layer has L layers of n parameters (theta[l * n + i]);
client k trained only its first L_k <= L (a device with a shorter coherence
budget runs a truncated circuit, `QuantumLayer.set_layers_active`). Layer l
of the aggregate averages layer l over the clients that hold it:

    theta_l = sum_{k: L_k > l} w_k theta_{k,l} / sum_{k: L_k > l} w_k

and a layer nobody holds keeps `base` (zeros for deltas). For a whole model
vector the same rule is a coordinate-wise mean under masks: every classical
entry is held by every client, a quantum entry of layer l by the clients with
L_k > l (`layer_mask`, `masked_average`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qfl.errors import TrainingError


def layer_mask(num_layers: int, layer_size: int, layers_active: int) -> np.ndarray:
    """(L * n,) bool: True at the parameters of the first `layers_active` layers."""
    if not 0 <= layers_active <= num_layers:
        raise TrainingError(f"layers_active={layers_active} is not in 0..{num_layers}")
    mask = np.zeros(num_layers * layer_size, dtype=bool)
    mask[: layers_active * layer_size] = True
    return mask


def masked_average(
    updates: Sequence[np.ndarray],
    weights: Sequence[float],
    masks: Sequence[np.ndarray],
    base: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Coordinate-wise weighted mean over the clients whose mask holds the coordinate.

    updates (K, P), weights (K,) >= 0, masks (K, P) bool -> (P,); coordinates no
    client holds (or whose holders all have weight 0) take `base`.
    """
    u = np.asarray(updates, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    m = np.asarray(masks, dtype=bool)
    if u.ndim != 2 or m.shape != u.shape or w.shape != (len(u),):
        raise TrainingError(
            f"updates {u.shape}, masks {m.shape} and weights {w.shape} do not line up"
        )
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise TrainingError("aggregation weights must be finite and >= 0")
    held = w[:, None] * m  # (K, P)
    total = held.sum(axis=0)  # (P,)
    summed = (held * np.where(m, u, 0.0)).sum(axis=0)
    fill = np.broadcast_to(np.asarray(base, dtype=np.float64), total.shape)
    out = np.where(total > 0, summed / np.where(total > 0, total, 1.0), fill)
    return out.astype(np.asarray(updates[0]).dtype, copy=False)


def aggregate_layers(
    layer_params: Sequence[np.ndarray],
    weights: Sequence[float],
    num_layers: int,
    base: np.ndarray | None = None,
) -> np.ndarray:
    """Layerwise weighted mean: client k's (L_k, n) layers -> the global (L, n).

    Layer l averages over the clients with L_k > l; a layer nobody holds keeps
    base[l] (zeros if no base).
    """
    if not layer_params:
        raise TrainingError("no client layers to aggregate")
    shapes = [np.shape(p) for p in layer_params]
    n = shapes[0][1] if len(shapes[0]) == 2 else None
    if n is None or any(len(s) != 2 or s[1] != n or s[0] > num_layers for s in shapes):
        raise TrainingError(f"client layers must be (L_k <= {num_layers}, n), got {shapes}")
    padded = np.zeros((len(layer_params), num_layers * n))
    masks = np.zeros_like(padded, dtype=bool)
    for k, params in enumerate(layer_params):
        size = params.size
        padded[k, :size] = np.asarray(params, dtype=np.float64).reshape(-1)
        masks[k, :size] = True
    fill = np.zeros(num_layers * n) if base is None else np.asarray(base, float).reshape(-1)
    if fill.shape != (num_layers * n,):
        raise TrainingError(f"base must be ({num_layers}, {n}), got {np.shape(base)}")
    return masked_average(padded, weights, masks, fill).reshape(num_layers, n)
