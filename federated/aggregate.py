"""Aggregation rules as pure functions over client updates, and the server step.

Each rule maps the round's update vectors Delta w_k (shape (P,)) to one
aggregated update Delta; the server step turns it into the next global model.
The paper's Eq. 6 writes w^(t+1) as the weighted sum of updates alone; read
literally that forgets w^(t), so qfl uses the standard server step

    w^(t+1) = w^(t) + eta * Delta,    Delta = sum_k alpha_k Delta w_k  (sum_k alpha_k = 1)

(eta = server_lr, 1 for FedAvg), or an adaptive server optimizer
(FedAdam / FedYogi / FedAdagrad) that treats Delta as a pseudo-gradient.

Rules (`AggregationConfig.rule`):

- fedavg, fedprox: weighted mean, weights n_k (FedProx changes the local
  objective, not the server rule).
- hybrid: Eq. 6-7, weights alpha_k ~ n_k * r_k / (sigma_k^2 + eps) after the
  SNR shrinkage M of the quantum-parameter entries (`hybrid_aggregate`).
- median, trimmed_mean: coordinate-wise, unweighted (a weight would let one
  client that claims many samples move the statistic).
- krum, multi_krum: Blanchard et al. 2017, unweighted for the same reason.

Norm clipping (`clip_norm`) applies to every update before any rule. Updates
are always taken in client-id order, so the float result does not depend on
the order in which they arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from federated.layerwise import masked_average
from federated.messages import ClientUpdate
from federated.privacy import PrivacyConfig, private_mean
from qfl.errors import TrainingError

Rule = Literal["fedavg", "fedprox", "hybrid", "median", "trimmed_mean", "krum", "multi_krum"]
ServerOptimizerName = Literal["none", "fedadam", "fedyogi", "fedadagrad"]

RULES: tuple[str, ...] = get_args(Rule)
ROBUST_RULES = ("median", "trimmed_mean", "krum", "multi_krum")
SERVER_OPTIMIZERS: tuple[str, ...] = get_args(ServerOptimizerName)


class AggregationConfig(BaseModel):
    """How the server combines a round's updates and steps the global model.

    server_lr is eta of the server step: the plain step w + eta * Delta when
    server_optimizer is none, the adaptive step's learning rate otherwise
    (Reddi et al. 2021 tune it in [1e-3, 1]; beta1, beta2, tau as in their
    Algorithm 2). `byzantine` is Krum's f; `multi_krum_m` the number of
    best-scored updates Multi-Krum averages (None: n - f).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: Rule = "fedavg"
    server_optimizer: ServerOptimizerName = "none"
    server_lr: float = Field(1.0, gt=0.0, description="eta of the server step")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="adaptive optimizers: momentum decay")
    beta2: float = Field(0.99, ge=0.0, lt=1.0, description="fedadam/fedyogi: 2nd-moment decay")
    tau: float = Field(1e-3, gt=0.0, description="adaptive optimizers: adaptivity floor")
    trim_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="trimmed_mean: drop this fraction at each end"
    )
    byzantine: int = Field(1, ge=0, description="krum/multi_krum: tolerated Byzantine clients f")
    multi_krum_m: int | None = Field(None, ge=1, description="multi_krum: average m (None: n - f)")
    clip_norm: float | None = Field(None, gt=0.0, description="clip every update to this L2 norm")
    hybrid_eps: float = Field(
        1e-4, gt=0.0, description="hybrid: variance floor eps of alpha_k (Eq. 6)"
    )
    snr_shrink: bool = Field(True, description="hybrid: shrink quantum deltas by SNR (Eq. 7)")

    @model_validator(mode="after")
    def _consistent(self) -> AggregationConfig:
        if self.multi_krum_m is not None and self.rule != "multi_krum":
            raise ValueError(f"multi_krum_m is set but rule is {self.rule!r}, not multi_krum")
        return self

    @property
    def robust(self) -> bool:
        """True for rules that look at individual updates (incompatible with secure aggregation)."""
        return self.rule in ROBUST_RULES

    @property
    def min_updates(self) -> int:
        """The fewest updates a round needs under this rule (krum: n > 2f + 2)."""
        if self.rule == "krum":
            return 2 * self.byzantine + 3
        if self.rule == "multi_krum":
            return max(2 * self.byzantine + 3, self.multi_krum_m or 1)
        return 1


# --------------------------------------------------------------------------- helpers


def _stack(deltas: Sequence[np.ndarray]) -> np.ndarray:
    """(K, P) float64 stack of the deltas; raises on none or on mixed shapes."""
    if not deltas:
        raise TrainingError("no client update to aggregate")
    shape = deltas[0].shape
    if any(d.shape != shape for d in deltas):
        raise TrainingError(f"updates differ in shape: {sorted({d.shape for d in deltas})}")
    return np.stack([np.asarray(d, dtype=np.float64) for d in deltas])


# --------------------------------------------------------------------------- mean rules


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


def clip_by_norm(delta: np.ndarray, max_norm: float) -> np.ndarray:
    """Delta * min(1, C / ||Delta||_2): an update longer than C is scaled to norm C exactly.

    Bounds what any one client can move the model by (norm clipping as in
    robust and DP federated learning); shorter updates pass unchanged.
    """
    if not max_norm > 0:
        raise TrainingError(f"clip norm must be > 0, got {max_norm}")
    d = np.asarray(delta, dtype=np.float64)
    norm = float(np.linalg.norm(d))
    if norm <= max_norm:
        return np.array(delta, dtype=np.float32)
    return (d * (max_norm / norm)).astype(np.float32)


# --------------------------------------------------------------------------- hybrid (Eq. 6-7)


def hybrid_weights(
    num_samples: Sequence[float],
    reliability: Sequence[float],
    noise_variance: Sequence[float],
    eps: float,
) -> np.ndarray:
    """Eq. 6 adaptive weights alpha_k = a_k / sum_j a_j, a_k = n_k * r_k / (sigma_k^2 + eps).

    n_k is the client's example count, r_k in [0, 1] its reliability (from the
    scheduler: how often its resource delivered), sigma_k^2 the per-parameter
    variance of the quantum noise in its update (0 for classical updates).
    Why inverse variance: if every Delta w_k is the common descent direction
    plus independent zero-mean noise of variance sigma_k^2 + eps, the
    minimum-variance unbiased combination weights each by the inverse of that
    variance. eps is the variance a noiseless update already has around the
    population mean (client heterogeneity, SGD noise); it keeps classical
    weights finite and sets the scale at which quantum noise starts to matter:
    a quantum update with sigma^2 = eps counts half as much as a classical one.
    """
    n = np.asarray(num_samples, dtype=np.float64)
    r = np.asarray(reliability, dtype=np.float64)
    s2 = np.asarray(noise_variance, dtype=np.float64)
    if not n.shape == r.shape == s2.shape:
        raise TrainingError(f"hybrid weights: {n.size} counts, {r.size} reliabilities, {s2.size}")
    if not eps > 0:
        raise TrainingError(f"hybrid eps must be > 0, got {eps}")
    if np.any(~np.isfinite(r)) or np.any((r < 0) | (r > 1)):
        raise TrainingError(f"reliabilities must lie in [0, 1]: {r.tolist()}")
    if np.any(~np.isfinite(s2)) or np.any(s2 < 0):
        raise TrainingError(f"noise variances must be finite and >= 0: {s2.tolist()}")
    a = n * r / (s2 + eps)
    if np.any(a < 0) or not 0 < a.sum() < np.inf:
        raise TrainingError(
            f"hybrid weights n_k * r_k / (sigma_k^2 + eps) are all 0 or invalid: {a.tolist()}"
        )
    return a / a.sum()


def snr_shrink(
    delta: np.ndarray, noise_variance: float, quantum_mask: np.ndarray
) -> tuple[np.ndarray, float]:
    """Eq. 7 mapping M(Delta theta_k, E_k): quantum-parameter entries times their SNR gain.

    With q quantum entries, observed power p = ||Delta theta||^2 / q and noise
    variance sigma^2 (from shots and mitigation data E_k), the signal power is
    estimated as s^2 = max(p - sigma^2, 0) (E[Delta theta_i^2] = theta_i^2 +
    sigma^2 for zero-mean noise). The entries are scaled by the Wiener gain

        lambda = SNR / (1 + SNR) = s^2 / p = max(0, 1 - sigma^2 / p),  SNR = s^2 / sigma^2,

    the mean-square-optimal scalar shrinkage (the positive-part James-Stein
    estimator up to its (q - 2) / q factor): an update that is mostly noise
    is pulled towards 0 instead of random-walking the circuit angles, a clean
    one (sigma^2 = 0) passes unchanged. Classical entries are never touched.
    Returns the mapped delta (float32) and lambda.
    """
    mask = np.asarray(quantum_mask, dtype=bool)
    if mask.shape != delta.shape:
        raise TrainingError(f"quantum mask shape {mask.shape} != update shape {delta.shape}")
    if not noise_variance >= 0:
        raise TrainingError(f"noise variance must be >= 0, got {noise_variance}")
    out = np.array(delta, dtype=np.float64)
    if noise_variance == 0 or not mask.any():
        return out.astype(np.float32), 1.0
    power = float(np.mean(out[mask] ** 2))
    gain = max(0.0, 1.0 - noise_variance / power) if power > 0 else 0.0
    out[mask] *= gain
    return out.astype(np.float32), gain


def hybrid_aggregate(
    deltas: Sequence[np.ndarray],
    num_samples: Sequence[float],
    reliability: Sequence[float],
    noise_variance: Sequence[float],
    quantum_mask: np.ndarray | None,
    *,
    eps: float,
    shrink: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eq. 6-7: Delta = sum_k alpha_k M(Delta w_k, E_k), classical and quantum updates together.

    Eq. 6 sums classical updates (alpha^(C)) and quantum updates (alpha^(Q))
    separately; with one formula for alpha_k (`hybrid_weights`, sigma_k^2 = 0
    for a classical update) the two sums are one weighted mean. M
    (`snr_shrink`) maps a quantum update's circuit-parameter entries; classical
    updates (sigma^2 = 0) pass through it unchanged. The weights are
    normalised (sum alpha_k = 1) because the server step adds the result to w^(t).
    Returns (Delta as float32, alpha (K,), lambda (K,)).
    """
    alpha = hybrid_weights(num_samples, reliability, noise_variance, eps)
    mapped, gains = list(deltas), np.ones(len(deltas))
    if shrink and any(s > 0 for s in noise_variance):
        if quantum_mask is None:
            raise TrainingError("hybrid rule with snr_shrink needs the quantum parameter mask")
        for k, (delta, s2) in enumerate(zip(deltas, noise_variance, strict=True)):
            mapped[k], gains[k] = snr_shrink(delta, s2, quantum_mask)
    return fedavg(mapped, alpha), alpha, gains


# --------------------------------------------------------------------------- robust rules


def coordinate_median(deltas: Sequence[np.ndarray]) -> np.ndarray:
    """Coordinate-wise median (Yin et al. 2018); an even count averages the two middle values."""
    return np.median(_stack(deltas), axis=0).astype(np.float32)


def trimmed_mean(deltas: Sequence[np.ndarray], trim_fraction: float) -> np.ndarray:
    """Coordinate-wise beta-trimmed mean (Yin et al. 2018).

    Per coordinate, drop the b = floor(beta * K) smallest and b largest values
    and average the remaining K - 2b; beta < 1/2 keeps at least one.
    """
    if not 0 <= trim_fraction < 0.5:
        raise TrainingError(f"trim fraction must lie in [0, 0.5), got {trim_fraction}")
    stacked = np.sort(_stack(deltas), axis=0)  # (K, P)
    k = stacked.shape[0]
    b = math.floor(trim_fraction * k + 1e-9)
    return stacked[b : k - b].mean(axis=0).astype(np.float32)


def _check_krum(k: int, f: int) -> None:
    if f < 0:
        raise TrainingError(f"krum: byzantine count f must be >= 0, got {f}")
    if k <= 2 * f + 2:
        raise TrainingError(
            f"krum with byzantine f={f} needs more than 2f + 2 = {2 * f + 2} updates, got {k}"
        )


def krum_scores(deltas: Sequence[np.ndarray], f: int) -> np.ndarray:
    """Krum score of each update: sum of squared distances to its K - f - 2 nearest others.

    Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine
    Tolerant Gradient Descent"; needs K > 2f + 2.
    """
    x = _stack(deltas)  # (K, P)
    k = x.shape[0]
    _check_krum(k, f)
    sq = np.einsum("kp,kp->k", x, x)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)  # (K, K)
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : k - f - 2]
    return nearest.sum(axis=1)


def krum_select(deltas: Sequence[np.ndarray], f: int, m: int = 1) -> np.ndarray:
    """Indices of the m updates with the lowest Krum scores, best first (ties: lower index)."""
    scores = krum_scores(deltas, f)
    if not 1 <= m <= len(scores):
        raise TrainingError(f"multi-krum m={m} must lie in [1, {len(scores)}] (the update count)")
    return np.argsort(scores, kind="stable")[:m]


def krum(deltas: Sequence[np.ndarray], f: int) -> np.ndarray:
    """The single update with the lowest Krum score (Blanchard et al. 2017)."""
    return np.array(deltas[int(krum_select(deltas, f, 1)[0])], dtype=np.float32)


def multi_krum(deltas: Sequence[np.ndarray], f: int, m: int | None = None) -> np.ndarray:
    """Plain mean of the m best-scored updates (Multi-Krum, Blanchard et al. 2017); m = K - f."""
    m = len(deltas) - f if m is None else m
    chosen = sorted(int(i) for i in krum_select(deltas, f, m))
    return fedavg([deltas[i] for i in chosen], [1.0] * len(chosen))


# --------------------------------------------------------------------------- server step


def apply_update(weights: np.ndarray, update: np.ndarray, server_lr: float = 1.0) -> np.ndarray:
    """Server step w^(t+1) = w^(t) + server_lr * update."""
    if weights.shape != update.shape:
        raise TrainingError(f"update shape {update.shape} != weights shape {weights.shape}")
    return (weights.astype(np.float64) + server_lr * update.astype(np.float64)).astype(np.float32)


class ServerOptimizer:
    """The server step, with the adaptive optimizers' state m, v (Reddi et al. 2021, Alg. 2).

    With Delta_t the aggregated update (a pseudo-gradient pointing downhill):

        m_t = beta1 * m_{t-1} + (1 - beta1) * Delta_t
        v_t = v_{t-1} + Delta_t^2                                          (FedAdagrad)
        v_t = v_{t-1} - (1 - beta2) * Delta_t^2 * sign(v_{t-1} - Delta_t^2) (FedYogi)
        v_t = beta2 * v_{t-1} + (1 - beta2) * Delta_t^2                    (FedAdam)
        w_{t+1} = w_t + eta * m_t / (sqrt(v_t) + tau)

    with m_{-1} = 0 and v_{-1} = tau^2 (the paper's v_{-1} >= tau^2), no bias
    correction, as in the paper. `none` is the plain step w + eta * Delta.
    The state lives in this object (owned by the aggregator), not in globals;
    `state` / `load_state` let a checkpoint carry it across a restart.
    """

    def __init__(self, config: AggregationConfig):
        self.kind = config.server_optimizer
        self.lr = config.server_lr
        self.beta1, self.beta2, self.tau = config.beta1, config.beta2, config.tau
        self.m: np.ndarray | None = None  # (P,) float64
        self.v: np.ndarray | None = None  # (P,) float64
        self.steps = 0

    def step(self, weights: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """w_{t+1} from w_t and the aggregated update Delta_t (float32 out, float64 state)."""
        if weights.shape != delta.shape:
            raise TrainingError(f"update shape {delta.shape} != weights shape {weights.shape}")
        self.steps += 1
        if self.kind == "none":
            return apply_update(weights, delta, self.lr)
        d = delta.astype(np.float64)
        if self.m is None or self.m.shape != d.shape:
            self.m = np.zeros_like(d)
            self.v = np.full_like(d, self.tau**2)
        d2 = d * d
        self.m = self.beta1 * self.m + (1.0 - self.beta1) * d
        if self.kind == "fedadagrad":
            self.v = self.v + d2
        elif self.kind == "fedyogi":
            self.v = self.v - (1.0 - self.beta2) * d2 * np.sign(self.v - d2)
        else:  # fedadam
            self.v = self.beta2 * self.v + (1.0 - self.beta2) * d2
        step = self.lr * self.m / (np.sqrt(self.v) + self.tau)
        return (weights.astype(np.float64) + step).astype(np.float32)

    def state(self) -> dict[str, np.ndarray | int | str]:
        """A copy of the optimizer state, for checkpoints."""
        out: dict[str, np.ndarray | int | str] = {"kind": self.kind, "steps": self.steps}
        if self.m is not None and self.v is not None:
            out["m"], out["v"] = self.m.copy(), self.v.copy()
        return out

    def load_state(self, state: Mapping[str, np.ndarray | int | str]) -> None:
        """Restore a `state()` taken from an optimizer of the same kind."""
        if state.get("kind") != self.kind:
            raise TrainingError(f"optimizer state is for {state.get('kind')!r}, not {self.kind!r}")
        self.steps = int(state["steps"])
        self.m = None if "m" not in state else np.array(state["m"], dtype=np.float64)
        self.v = None if "v" not in state else np.array(state["v"], dtype=np.float64)


# --------------------------------------------------------------------------- one round


class AggregationInfo(BaseModel):
    """What a round's aggregation did, per client in client-id order (for MLflow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rule: str
    clients: tuple[int, ...]
    weights: tuple[float, ...] | None  # share of each update in Delta; None: coordinate-wise
    selected: tuple[int, ...]  # client ids whose updates entered Delta
    clipped: tuple[int, ...] = ()  # client ids whose update was clipped
    dropped: tuple[int, ...] = ()  # client ids whose update had NaN / inf entries
    shrink: tuple[float, ...] | None = None  # hybrid: Eq. 7 gain lambda per client
    update_norm: float = 0.0  # ||Delta||_2 before the server step

    def metrics(self) -> dict[str, float]:
        """Scalars to log per round."""
        out = {
            "agg_update_norm": self.update_norm,
            "agg_selected": float(len(self.selected)),
            "agg_clipped": float(len(self.clipped)),
            "agg_dropped": float(len(self.dropped)),
        }
        if self.shrink:
            out["agg_min_shrink"] = float(min(self.shrink))
        return out


def combine(
    updates: Sequence[ClientUpdate],
    config: AggregationConfig,
    *,
    quantum_mask: np.ndarray | None = None,
    reliability: Mapping[int, float] | None = None,
) -> tuple[np.ndarray, AggregationInfo]:
    """The round's aggregated update Delta (float32, (P,)) under `config`, and what happened.

    Updates are sorted by client id; one with a NaN or inf entry is dropped
    (and reported: the ledger rejects them, but a run may have no ledger);
    the rest are clipped to `clip_norm` when set, then combined by the rule.
    `reliability` maps client id -> r_k in [0, 1] (missing: 1.0); only the
    hybrid rule uses it.
    """
    ordered = sorted(updates, key=lambda u: u.client_id)
    dropped = tuple(u.client_id for u in ordered if not np.isfinite(u.delta).all())
    ordered = [u for u in ordered if u.client_id not in dropped]
    if not ordered:
        raise TrainingError(f"no client update to aggregate (non-finite: {list(dropped)})")
    ids = tuple(u.client_id for u in ordered)
    deltas = [u.delta for u in ordered]
    clipped: tuple[int, ...] = ()
    if config.clip_norm is not None:
        norms = [float(np.linalg.norm(d.astype(np.float64))) for d in deltas]
        clipped = tuple(i for i, n in zip(ids, norms, strict=True) if n > config.clip_norm)
        deltas = [clip_by_norm(d, config.clip_norm) for d in deltas]
    counts = [u.num_samples for u in ordered]
    share: np.ndarray | None = None
    selected, shrink = ids, None
    rule = config.rule
    masks = [u.trained for u in ordered]
    if rule in ("fedavg", "fedprox") and any(m is not None for m in masks):
        # heterogeneous depth: each entry averaged over the clients that trained it
        share = np.asarray(counts, np.float64) / max(sum(counts), 1)
        full = [
            np.ones(d.shape, bool) if m is None else m for d, m in zip(deltas, masks, strict=True)
        ]
        delta = masked_average(deltas, share, full).astype(np.float32)
    elif rule in ("fedavg", "fedprox"):
        delta = fedavg(deltas, counts)
        share = np.asarray(counts, np.float64) / max(sum(counts), 1)
    elif rule == "hybrid":
        r = [float((reliability or {}).get(i, 1.0)) for i in ids]
        s2 = [u.noise_variance for u in ordered]
        delta, share, gains = hybrid_aggregate(
            deltas,
            counts,
            r,
            s2,
            quantum_mask,
            eps=config.hybrid_eps,
            shrink=config.snr_shrink,
        )
        shrink = tuple(float(g) for g in gains)
    elif rule == "median":
        delta = coordinate_median(deltas)
    elif rule == "trimmed_mean":
        delta = trimmed_mean(deltas, config.trim_fraction)
    else:  # krum, multi_krum
        m = 1 if rule == "krum" else config.multi_krum_m or len(deltas) - config.byzantine
        chosen = sorted(int(i) for i in krum_select(deltas, config.byzantine, m))
        delta = fedavg([deltas[i] for i in chosen], [1.0] * len(chosen))
        selected = tuple(ids[i] for i in chosen)
        share = np.isin(np.arange(len(ids)), chosen) / len(chosen)
    info = AggregationInfo(
        rule=rule,
        clients=ids,
        weights=None if share is None else tuple(float(a) for a in share),
        selected=selected,
        clipped=clipped,
        dropped=dropped,
        shrink=shrink,
        update_norm=float(np.linalg.norm(delta.astype(np.float64))),
    )
    return delta, info


def aggregate_updates(
    weights: np.ndarray,
    updates: Sequence[ClientUpdate],
    *,
    rule: str = "fedavg",
    server_lr: float = 1.0,
    config: AggregationConfig | None = None,
    quantum_mask: np.ndarray | None = None,
    reliability: Mapping[int, float] | None = None,
    optimizer: ServerOptimizer | None = None,
) -> np.ndarray:
    """Next global weights from the round's updates, taken in client-id order.

    Without `config`, aggregates with `rule` and the plain step of `server_lr`
    (the rule's other parameters at their defaults). An adaptive server
    optimizer keeps state across rounds, so it must be passed in (`optimizer`,
    built from the same config); the stateless call refuses one.
    """
    if config is None:
        if rule not in RULES:
            raise TrainingError(f"unknown aggregation rule {rule!r} (known: {', '.join(RULES)})")
        config = AggregationConfig(rule=rule, server_lr=server_lr)
    delta, _ = combine(updates, config, quantum_mask=quantum_mask, reliability=reliability)
    if optimizer is None:
        if config.server_optimizer != "none":
            raise TrainingError(
                f"server optimizer {config.server_optimizer} keeps state across rounds: "
                "pass optimizer=ServerOptimizer(config) (or use an Aggregator)"
            )
        return apply_update(weights, delta, config.server_lr)
    return optimizer.step(weights, delta)


class Aggregator:
    """A run's aggregation: config, quantum-parameter mask and server-optimizer state.

    The aggregator actor owns one; `step` is one round.
    """

    def __init__(self, config: AggregationConfig, quantum_mask: np.ndarray | None = None):
        self.config = config
        self.quantum_mask = None if quantum_mask is None else np.asarray(quantum_mask, dtype=bool)
        self.optimizer = ServerOptimizer(config)

    def step(
        self,
        weights: np.ndarray,
        updates: Sequence[ClientUpdate],
        reliability: Mapping[int, float] | None = None,
        private: PrivateStep | None = None,
    ) -> tuple[np.ndarray, AggregationInfo]:
        """w^(t+1) and what the round's aggregation did.

        With `private`, the round is DP-FedAvg (`federated.privacy.private_mean`): each
        update clipped to C, Gaussian noise N(0, z^2 C^2) on the sum (central mode; local
        mode: the clients noised their own), divided by the public number of sampled
        clients, so that the noise scale does not depend on who answered.
        """
        if self.quantum_mask is not None and self.quantum_mask.shape != weights.shape:
            raise TrainingError(
                f"quantum mask shape {self.quantum_mask.shape} != weights shape {weights.shape}"
            )
        if private is not None:
            ordered = sorted(updates, key=lambda u: u.client_id)
            delta = private_mean(
                [u.delta for u in ordered],
                private.config,
                private.noise_multiplier,
                private.rng,
                denominator=private.sampled,
            )
            ids = tuple(u.client_id for u in ordered)
            norm = float(np.linalg.norm(delta.astype(np.float64)))
            info = AggregationInfo(
                rule=f"dp_{private.config.mode}",
                clients=ids,
                weights=None,
                selected=ids,
                update_norm=norm,
            )
            return self.optimizer.step(weights, delta), info
        delta, info = combine(
            updates, self.config, quantum_mask=self.quantum_mask, reliability=reliability
        )
        return self.optimizer.step(weights, delta), info


class PrivateStep(BaseModel):
    """One DP round's parameters for `Aggregator.step`: the mechanism, z, the noise rng."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: PrivacyConfig
    noise_multiplier: float = Field(ge=0.0)
    rng: np.random.Generator
    sampled: int = Field(ge=1)  # the public denominator: clients sampled this round
