"""Hybrid verification: a cheap classical cross-check of a quantum update.

Graceful degradation (Sec. 5.2.2) needs to tell a usable quantum update from a
suspect one (a QPU that returned garbage, a drifted calibration, a corrupted
result). The caller computes, by exact simulation on a small probe batch of the
client's data, a reference and probe losses; this module only compares numbers:

* direction: cos(delta_Q, r) >= min_cosine, where r is the exact reference, e.g.
  -grad L_exact(w_t; probe) (one exact forward + backward) or the exact delta;
* size: 1 / max_norm_ratio <= ||delta_Q|| / ||r|| <= max_norm_ratio (only meaningful
  when r is on the update's scale: the exact delta, or -lr * steps * grad; off by default);
* probe loss: L_exact(w_t + delta_Q; probe) <= L_base + max_loss_increase * max(|L_base|, 1),
  where L_base is L_exact(w_t; probe) (or after the exact reference update);
* finiteness: every entry of delta_Q is finite.

Each check runs when its inputs are given. A failed check makes the update
suspect; the caller then recomputes it classically and marks it as a fallback.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_TINY = 1e-12


class CrossCheckConfig(BaseModel):
    """Thresholds of the quantum-update cross-check."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_cosine: float = Field(0.0, ge=-1.0, le=1.0, description="cos(delta_Q, reference) floor")
    max_norm_ratio: float | None = Field(
        None, ge=1.0, description="||delta_Q|| / ||reference|| within [1/r, r]; null: no check"
    )
    max_loss_increase: float | None = Field(
        0.1, ge=0.0, description="probe loss may exceed the baseline by this x max(|base|, 1)"
    )
    probe_batch: int = Field(64, ge=1, description="examples in the probe batch (caller)")


class CrossCheckResult(BaseModel):
    """The cross-check's verdict and the numbers behind it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    suspect: bool
    reasons: tuple[str, ...] = ()
    cosine: float | None = None
    norm_ratio: float | None = None
    loss_increase: float | None = None  # probe loss - baseline loss

    @property
    def reason(self) -> str | None:
        """All failed checks in one line (for the fallback record), or None."""
        return "; ".join(self.reasons) if self.reasons else None


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b); 1.0 when both are zero, 0.0 when only one is."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"cannot compare vectors of {a.size} and {b.size} entries")
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na <= _TINY and nb <= _TINY:
        return 1.0
    if na <= _TINY or nb <= _TINY:
        return 0.0
    return float(np.clip(a @ b / (na * nb), -1.0, 1.0))


def cross_check(
    candidate: np.ndarray,
    config: CrossCheckConfig,
    *,
    reference: np.ndarray | None = None,
    probe_loss: float | None = None,
    baseline_loss: float | None = None,
) -> CrossCheckResult:
    """Whether a quantum update `candidate` is suspect (see the module docstring).

    `reference`: the exact direction to compare with (same shape). `probe_loss`:
    exact-simulation loss on the probe batch after applying `candidate`;
    `baseline_loss`: the loss it is compared with (both or neither).
    """
    if (probe_loss is None) != (baseline_loss is None):
        raise ValueError("give both probe_loss and baseline_loss, or neither")
    candidate = np.asarray(candidate, dtype=np.float64)
    if not np.all(np.isfinite(candidate)):
        return CrossCheckResult(suspect=True, reasons=("non-finite entries in the update",))
    reasons: list[str] = []
    cosine = norm_ratio = loss_increase = None
    if reference is not None:
        reference = np.asarray(reference, dtype=np.float64)
        if not np.all(np.isfinite(reference)):
            raise ValueError("the exact reference has non-finite entries")
        cosine = cosine_similarity(candidate, reference)
        if cosine < config.min_cosine:
            reasons.append(f"direction: cosine {cosine:.3f} < {config.min_cosine}")
        if config.max_norm_ratio is not None:
            norm_ratio = _norm_ratio(candidate, reference)
            r = config.max_norm_ratio
            if not 1.0 / r <= norm_ratio <= r:
                reasons.append(f"size: norm ratio {norm_ratio:.3g} outside [1/{r}, {r}]")
    if probe_loss is not None and baseline_loss is not None:
        if not (math.isfinite(probe_loss) and math.isfinite(baseline_loss)):
            reasons.append(f"probe loss not finite ({probe_loss}, baseline {baseline_loss})")
        else:
            loss_increase = probe_loss - baseline_loss
            limit = config.max_loss_increase
            if limit is not None and loss_increase > limit * max(abs(baseline_loss), 1.0):
                reasons.append(
                    f"probe loss {probe_loss:.4g} exceeds baseline {baseline_loss:.4g} "
                    f"by more than {limit} x max(|baseline|, 1)"
                )
    return CrossCheckResult(
        suspect=bool(reasons),
        reasons=tuple(reasons),
        cosine=cosine,
        norm_ratio=norm_ratio,
        loss_increase=loss_increase,
    )


def _norm_ratio(candidate: np.ndarray, reference: np.ndarray) -> float:
    nc, nr = float(np.linalg.norm(candidate)), float(np.linalg.norm(reference))
    if nr <= _TINY:
        return 1.0 if nc <= _TINY else math.inf
    return nc / nr
