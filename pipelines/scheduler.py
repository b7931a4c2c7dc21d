"""Task assignment (Eq. 9), the advantage score A(t), client kinds and reliability.

Client kinds (Sec. 3.2.1): *classical* clients never use a quantum resource (they
evaluate a quantum layer by exact simulation, or train a classical model);
*quantum-enhanced* clients use their resource whenever it is available;
*hybrid* clients let Eq. 9 decide each round:

    assign(k, t) = quantum    if Q_k^avail and A(t) > tau_Q               (9)
                   classical  otherwise

Q_k^avail: client k's resource is available in the monitor's snapshot (up, not
tripped) and has enough of this round's shots budget left for k's job.

The advantage score, in bits (log2), of running client k's quantum-layer job on
its resource r rather than simulating it exactly:

    A(t) = w_cost * log2(T_C / T_Q) + w_quality * log2(F) + w_gain * G

* T_C, the time of exact classical simulation of the job: measured (the
  `classical_seconds` argument), else modelled as
      T_C = c_amp * 3 * E * (g1 + g2) * 2^n
  (E circuit inputs per local training, g1 + g2 gates per circuit, forward +
  backward of the adjoint method ~ 3 passes over the 2^n amplitudes, c_amp the
  seconds per amplitude and gate); T_C = +inf when the statevectors do not fit,
  memory_factor * batch * 2^n * bytes_per_amplitude > memory_budget_bytes.
* T_Q, the resource's expected time for the job: queue wait plus service,
      T_Q = est_wait_s + job_overhead_s + S * seconds_per_shot,
  S = E * c * shots the job's shots (c circuits per input: 2P + 1 for the
  parameter-shift rule, 3 for SPSA).
* F, the fidelity estimate of one circuit at the resource's current (drifted)
  error rates, F = (1 - p1)^g1 (1 - p2)^g2 (1 - readout)^n, floored at 2^-64.
  A damped signal F <O> needs 1/F^2 times the shots for the same precision, so
  w_quality = 2 makes w_cost * log2(T_C/T_Q) + 2 log2 F the log2 of the speed-up
  at equal precision.
* G in [-1, 1], the observed gain of recent quantum updates on r over classical
  ones (`GainTracker`): (mean_Q - mean_C) / (|mean_Q| + |mean_C|) of the recent
  per-update validation-loss improvements; 0 until both paths have history.

A term whose weight is 0 contributes 0 (no 0 * inf). A is +inf exactly when exact
simulation is infeasible (and w_cost > 0): such a client then goes quantum for any
finite tau_Q whenever its resource is available; tau_Q = +inf never assigns
quantum; tau_Q = -inf assigns quantum whenever the resource is available (unless
A = -inf, which only a measured T_C of 0 gives). The score is never NaN.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ledger.records import Assignment
from quantum.config import CircuitConfig, entangling_pairs
from quantum.monitor import MonitorSnapshot
from quantum.resources import ResourceState

ClientKind = Literal["classical", "quantum_enhanced", "hybrid"]
KINDS: tuple[ClientKind, ...] = get_args(ClientKind)
NO_RESOURCE = -1
FIDELITY_FLOOR = 2.0**-64


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------- client kinds


class ClientKindsConfig(_Section):
    """How many clients (counts) or which share of them (fractions) are of each kind."""

    classical: float = Field(0.0, ge=0.0)
    quantum_enhanced: float = Field(0.0, ge=0.0)
    hybrid: float = Field(0.0, ge=0.0)

    def values(self) -> tuple[float, float, float]:
        return (self.classical, self.quantum_enhanced, self.hybrid)


class ClientsConfig(_Section):
    """Client kinds by count or by fraction (exactly one), and the resources they bind to."""

    counts: ClientKindsConfig | None = None
    fractions: ClientKindsConfig | None = None
    resources: tuple[str, ...] = Field(
        (), description="resources quantum-bound clients are spread over; empty: all"
    )

    @model_validator(mode="after")
    def _one_way(self) -> ClientsConfig:
        if (self.counts is None) == (self.fractions is None):
            raise ValueError("give exactly one of clients.counts or clients.fractions")
        if self.counts is not None and not all(float(v).is_integer() for v in self.counts.values()):
            raise ValueError(f"clients.counts must be whole numbers, got {self.counts.values()}")
        if self.fractions is not None and not math.isclose(
            sum(self.fractions.values()), 1.0, abs_tol=1e-6
        ):
            raise ValueError(f"clients.fractions must sum to 1, got {sum(self.fractions.values())}")
        if len(set(self.resources)) != len(self.resources):
            raise ValueError(f"clients.resources repeats a name: {list(self.resources)}")
        return self

    def kind_counts(self, n_clients: int) -> dict[ClientKind, int]:
        """Clients of each kind among `n_clients` (fractions by largest remainder)."""
        if self.counts is not None:
            counts = [int(v) for v in self.counts.values()]
            if sum(counts) != n_clients:
                raise ValueError(f"clients.counts sum to {sum(counts)}, not to {n_clients} clients")
            return dict(zip(KINDS, counts, strict=True))
        assert self.fractions is not None  # checked by the validator
        raw = [f * n_clients for f in self.fractions.values()]
        counts = [math.floor(r + 1e-9) for r in raw]
        by_remainder = sorted(range(len(KINDS)), key=lambda i: (-(raw[i] - counts[i]), i))
        for i in by_remainder[: n_clients - sum(counts)]:
            counts[i] += 1
        return dict(zip(KINDS, counts, strict=True))

    def check(self, n_clients: int, resource_names: Sequence[str]) -> None:
        """ValueError if the kinds do not fit `n_clients` or name unknown resources."""
        counts = self.kind_counts(n_clients)
        unknown = sorted(set(self.resources) - set(resource_names))
        if unknown:
            raise ValueError(f"clients.resources: unknown resources {unknown}")
        bound = counts["quantum_enhanced"] + counts["hybrid"]
        if bound and not (self.resources or resource_names):
            raise ValueError(f"{bound} quantum-enhanced/hybrid clients need a quantum resource")


@dataclass(frozen=True)
class ClientRoster:
    """Each registered client's kind and the resource it is bound to (arrays, O(N) bytes)."""

    kinds: np.ndarray  # (N,) int8: index into KINDS
    resource_index: np.ndarray  # (N,) int32: index into resources, NO_RESOURCE if none
    resources: tuple[str, ...]

    def kind(self, client_id: int) -> ClientKind:
        return KINDS[int(self.kinds[client_id])]

    def resource(self, client_id: int) -> str | None:
        index = int(self.resource_index[client_id])
        return None if index == NO_RESOURCE else self.resources[index]

    def clients_of(self, kind: ClientKind) -> list[int]:
        return [int(k) for k in np.flatnonzero(self.kinds == KINDS.index(kind))]

    def counts(self) -> dict[ClientKind, int]:
        return {kind: int(np.sum(self.kinds == i)) for i, kind in enumerate(KINDS)}


def assign_roster(
    config: ClientsConfig,
    n_clients: int,
    resource_names: Sequence[str],
    rng: np.random.Generator,
) -> ClientRoster:
    """Seeded assignment of client ids to kinds, and of quantum-bound clients to resources.

    One permutation of the ids: its first `classical` ids are classical, the next
    quantum-enhanced, the rest hybrid. Within each quantum-bound kind, clients go
    round-robin (in permutation order) over `config.resources` (or all resources),
    so every resource gets an even share of each kind.
    """
    config.check(n_clients, resource_names)
    counts = config.kind_counts(n_clients)
    names = tuple(config.resources or resource_names)
    order = rng.permutation(n_clients)
    kinds = np.empty(n_clients, dtype=np.int8)
    resource_index = np.full(n_clients, NO_RESOURCE, dtype=np.int32)
    start = 0
    for i, kind in enumerate(KINDS):
        ids = order[start : start + counts[kind]]
        kinds[ids] = i
        if kind != "classical":
            resource_index[ids] = np.arange(len(ids)) % len(names)
        start += counts[kind]
    return ClientRoster(kinds=kinds, resource_index=resource_index, resources=names)


# --------------------------------------------------------------------------- A(t) and Eq. 9


class SchedulerConfig(_Section):
    """Eq. 9's threshold, the weights and cost model of A(t), reliability and cooldown."""

    tau_q: float = Field(0.0, description="Eq. 9 threshold tau_Q (may be .inf or -.inf)")
    w_cost: float = Field(1.0, ge=0.0, description="weight of log2(T_C / T_Q)")
    w_quality: float = Field(2.0, ge=0.0, description="weight of log2(F)")
    w_gain: float = Field(2.0, ge=0.0, description="weight of the observed gain G in [-1, 1]")
    seconds_per_amplitude: float = Field(
        3e-9, gt=0.0, description="exact simulation: seconds per amplitude per gate per pass"
    )
    memory_budget_bytes: float = Field(4 * 2**30, gt=0.0, description="exact simulation memory")
    bytes_per_amplitude: int = Field(8, ge=1)
    memory_factor: float = Field(4.0, ge=1.0, description="statevectors held per batch item")
    gain_window: int = Field(20, ge=1, description="recent improvements kept per path")
    reliability_smoothing: float = Field(
        0.2, gt=0.0, le=1.0, description="EMA weight of a client's newest outcome"
    )
    failures_before_cooldown: int = Field(3, ge=1, description="consecutive failures")
    cooldown_rounds: int = Field(3, ge=0, description="rounds a failing client sits out")
    max_p2: float | None = Field(
        None, ge=0.0, le=1.0, description="fall back when the resource's 2-qubit error exceeds it"
    )
    quantum_timeout_s: float | None = Field(
        None, gt=0.0, description="a quantum job running longer falls back to classical"
    )
    min_selection_weight: float = Field(
        0.05, ge=0.0, le=1.0, description="selection weight floor of an eligible client"
    )

    @model_validator(mode="after")
    def _tau_not_nan(self) -> SchedulerConfig:
        if math.isnan(self.tau_q):
            raise ValueError("tau_q must not be NaN")
        return self


class QuantumJob(_Section):
    """What one client's local training asks of its quantum layer in a round."""

    qubits: int = Field(ge=1)
    gates_1q: int = Field(ge=0)  # per circuit (encoding + rotations)
    gates_2q: int = Field(ge=0)  # per circuit (entanglers)
    examples: int = Field(ge=1)  # circuit inputs in one local training (samples x epochs)
    circuits_per_example: int = Field(ge=1)  # 2P + 1 (parameter shift) or 3 (SPSA)
    shots: int = Field(ge=1)  # shots per circuit
    batch: int = Field(32, ge=1)  # inputs simulated at once by the exact executor

    @classmethod
    def from_circuit(
        cls,
        circuit: CircuitConfig,
        *,
        examples: int,
        shots: int,
        batch: int = 32,
        gradient: Literal["parameter_shift", "spsa"] = "parameter_shift",
    ) -> QuantumJob:
        """The job of the Eq. 4 ansatz of `circuit` over `examples` inputs."""
        n, layers = circuit.qubits, circuit.layers
        encodings = n * (layers if circuit.reupload else 1)
        weights = n * layers
        pairs = len(entangling_pairs(circuit.entanglement, n))
        return cls(
            qubits=n,
            gates_1q=encodings + weights,
            gates_2q=pairs * layers,
            examples=examples,
            circuits_per_example=2 * weights + 1 if gradient == "parameter_shift" else 3,
            shots=shots,
            batch=batch,
        )

    @property
    def total_shots(self) -> int:
        """S: shots the job needs on a QPU."""
        return self.examples * self.circuits_per_example * self.shots

    def exact_bytes(self, config: SchedulerConfig) -> float:
        """Memory of exact simulation: memory_factor x batch x 2^n x bytes per amplitude."""
        return config.memory_factor * self.batch * 2.0**self.qubits * config.bytes_per_amplitude

    def exact_seconds(self, config: SchedulerConfig) -> float:
        """Modelled T_C (s): c_amp x 3 x E x (g1 + g2) x 2^n; +inf if it does not fit memory."""
        if self.exact_bytes(config) > config.memory_budget_bytes:
            return math.inf
        gates = max(1, self.gates_1q + self.gates_2q)
        return config.seconds_per_amplitude * 3 * self.examples * gates * 2.0**self.qubits


class AdvantageTerms(_Section):
    """A(t) and its parts, for logging."""

    score: float
    cost: float  # log2(T_C / T_Q)
    quality: float  # log2(F)
    gain: float  # G
    classical_seconds: float  # T_C
    quantum_seconds: float  # T_Q
    fidelity: float  # F


def fidelity(job: QuantumJob, state: ResourceState) -> float:
    """F = (1 - p1)^g1 (1 - p2)^g2 (1 - readout)^n at the state's error rates."""
    return (
        (1.0 - state.p1) ** job.gates_1q
        * (1.0 - state.p2) ** job.gates_2q
        * (1.0 - state.readout) ** job.qubits
    )


def advantage_terms(
    job: QuantumJob,
    state: ResourceState,
    config: SchedulerConfig,
    gain: float = 0.0,
    classical_seconds: float | None = None,
) -> AdvantageTerms:
    """A(t) = w_cost log2(T_C / T_Q) + w_quality log2(F) + w_gain G (module docstring)."""
    if not -1.0 <= gain <= 1.0:
        raise ValueError(f"gain G must lie in [-1, 1], got {gain}")
    t_c = job.exact_seconds(config) if classical_seconds is None else float(classical_seconds)
    if not t_c >= 0.0:
        raise ValueError(f"classical seconds must be >= 0, got {classical_seconds}")
    t_q = state.expected_seconds(job.total_shots)  # > 0: shots >= 1, seconds_per_shot > 0
    cost = math.inf if math.isinf(t_c) else (math.log2(t_c / t_q) if t_c > 0 else -math.inf)
    f = fidelity(job, state)
    quality = math.log2(max(f, FIDELITY_FLOOR))
    score = (
        _weighted(config.w_cost, cost)
        + _weighted(config.w_quality, quality)
        + _weighted(config.w_gain, gain)
    )
    return AdvantageTerms(
        score=score,
        cost=cost,
        quality=quality,
        gain=gain,
        classical_seconds=t_c,
        quantum_seconds=t_q,
        fidelity=f,
    )


def advantage_score(
    job: QuantumJob,
    state: ResourceState,
    config: SchedulerConfig,
    gain: float = 0.0,
    classical_seconds: float | None = None,
) -> float:
    """A(t) of running `job` on the resource in `state` (see the module docstring)."""
    return advantage_terms(job, state, config, gain, classical_seconds).score


def _weighted(weight: float, term: float) -> float:
    return 0.0 if weight == 0.0 else weight * term


def assign_task(available: bool, advantage: float, tau_q: float) -> Assignment:
    """Eq. 9: quantum if Q_k^avail and A(t) > tau_Q, else classical."""
    return "quantum" if available and advantage > tau_q else "classical"


# --------------------------------------------------------------------------- observed gain


class GainTracker:
    """Recent per-update validation-loss improvements of quantum (per resource) and classical."""

    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self._classical: deque[float] = deque(maxlen=window)
        self._quantum: dict[str, deque[float]] = {}

    def observe(self, path: Assignment, improvement: float, resource: str | None = None) -> None:
        """One update's improvement (e.g. val loss at w_t minus at w_t + delta_k; > 0 good)."""
        if not math.isfinite(improvement):
            raise ValueError(f"improvement must be finite, got {improvement}")
        if path == "classical":
            self._classical.append(float(improvement))
        elif path == "quantum":
            if resource is None:
                raise ValueError("a quantum improvement needs its resource")
            self._quantum.setdefault(resource, deque(maxlen=self.window)).append(float(improvement))
        else:
            raise ValueError(f"path must be classical or quantum, got {path!r}")

    def gain(self, resource: str) -> float:
        """G = (mean_Q - mean_C) / (|mean_Q| + |mean_C|) in [-1, 1]; 0 without both histories."""
        quantum = self._quantum.get(resource)
        if not quantum or not self._classical:
            return 0.0
        q, c = float(np.mean(quantum)), float(np.mean(self._classical))
        scale = abs(q) + abs(c)
        return 0.0 if scale == 0.0 else float(np.clip((q - c) / scale, -1.0, 1.0))

    def state(self) -> dict[str, Any]:
        """JSON-able state (for checkpoints)."""
        return {
            "window": self.window,
            "classical": list(self._classical),
            "quantum": {name: list(values) for name, values in self._quantum.items()},
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> GainTracker:
        tracker = cls(int(state["window"]))
        tracker._classical.extend(float(v) for v in state["classical"])
        for name, values in state["quantum"].items():
            tracker._quantum[name] = deque((float(v) for v in values), maxlen=tracker.window)
        return tracker


# --------------------------------------------------------------------------- reliability


class ReliabilityTracker:
    """Per-client reliability in [0, 1] (EMA of outcomes) and cooldown after repeated failures.

    r_k <- (1 - s) r_k + s * ok_k for each recorded outcome (r_k starts at 1). After
    `failures_before_cooldown` consecutive failures, the last of them in round t,
    client k sits out rounds t+1 .. t+cooldown_rounds and is eligible again from
    t+cooldown_rounds+1; its failure streak restarts at 0.
    """

    def __init__(
        self,
        smoothing: float = 0.2,
        failures_before_cooldown: int = 3,
        cooldown_rounds: int = 3,
        initial: float = 1.0,
    ):
        if not 0.0 < smoothing <= 1.0 or not 0.0 <= initial <= 1.0:
            raise ValueError("need 0 < smoothing <= 1 and 0 <= initial <= 1")
        if failures_before_cooldown < 1 or cooldown_rounds < 0:
            raise ValueError("need failures_before_cooldown >= 1 and cooldown_rounds >= 0")
        self.smoothing = smoothing
        self.failures_before_cooldown = failures_before_cooldown
        self.cooldown_rounds = cooldown_rounds
        self.initial = initial
        self._reliability: dict[int, float] = {}
        self._streak: dict[int, int] = {}
        self._cooldown: dict[int, tuple[int, int]] = {}  # client -> (first, last) round out

    @classmethod
    def from_config(cls, config: SchedulerConfig) -> ReliabilityTracker:
        return cls(
            config.reliability_smoothing, config.failures_before_cooldown, config.cooldown_rounds
        )

    def record(self, client_id: int, round_: int, ok: bool) -> None:
        """One outcome of `client_id` in round `round_` (e.g. ok = its update was accepted)."""
        s = self.smoothing
        r = self._reliability.get(client_id, self.initial)
        self._reliability[client_id] = (1.0 - s) * r + s * float(ok)
        if ok:
            self._streak.pop(client_id, None)
            return
        streak = self._streak.get(client_id, 0) + 1
        if streak >= self.failures_before_cooldown:
            self._streak.pop(client_id, None)
            if self.cooldown_rounds > 0:
                self._cooldown[client_id] = (round_ + 1, round_ + self.cooldown_rounds)
        else:
            self._streak[client_id] = streak

    def reliability(self, client_id: int) -> float:
        return self._reliability.get(client_id, self.initial)

    def reliabilities(self, client_ids: Sequence[int]) -> np.ndarray:
        """(len(client_ids),) float64."""
        get, initial = self._reliability.get, self.initial
        return np.fromiter((get(int(k), initial) for k in client_ids), np.float64, len(client_ids))

    def cooling(self, client_id: int, round_: int) -> bool:
        """Whether `client_id` sits out round `round_`."""
        window = self._cooldown.get(client_id)
        return window is not None and window[0] <= round_ <= window[1]

    def eligible(self, client_ids: Sequence[int], round_: int) -> list[int]:
        return [int(k) for k in client_ids if not self.cooling(int(k), round_)]

    def selection_weights(
        self, client_ids: Sequence[int], round_: int, min_weight: float = 0.0
    ) -> np.ndarray:
        """max(r_k, min_weight) for eligible clients, 0 for cooled-down ones."""
        weights = np.maximum(self.reliabilities(client_ids), min_weight)
        for i, k in enumerate(client_ids):
            if self._cooldown and self.cooling(int(k), round_):
                weights[i] = 0.0
        return weights

    def state(self) -> dict[str, Any]:
        """JSON-able state (for checkpoints)."""
        return {
            "reliability": {str(k): v for k, v in self._reliability.items()},
            "streak": {str(k): v for k, v in self._streak.items()},
            "cooldown": {str(k): list(v) for k, v in self._cooldown.items()},
        }

    def load_state(self, state: Mapping[str, Any]) -> None:
        self._reliability = {int(k): float(v) for k, v in state["reliability"].items()}
        self._streak = {int(k): int(v) for k, v in state["streak"].items()}
        self._cooldown = {int(k): (int(v[0]), int(v[1])) for k, v in state["cooldown"].items()}


def select_clients(
    rng: np.random.Generator,
    candidates: Sequence[int],
    reliabilities: Sequence[float] | np.ndarray,
    k: int,
) -> list[int]:
    """Up to `k` distinct candidates, sampled without replacement with weights `reliabilities`.

    Candidates of weight 0 (cooled down, see `ReliabilityTracker.selection_weights`)
    are never picked; when at most `k` have a positive weight, all of them are
    returned (a round may then have fewer than `k` clients). Sorted ascending.
    Sequential draws: the first pick is candidate i with probability w_i / sum(w).
    """
    if k < 1:
        raise ValueError(f"cannot select {k} clients")
    ids = np.asarray(candidates, dtype=np.int64)
    weights = np.asarray(reliabilities, dtype=np.float64)
    if weights.shape != ids.shape:
        raise ValueError(f"{len(weights)} weights for {len(ids)} candidates")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("selection weights must be finite and >= 0")
    positive = weights > 0
    if np.count_nonzero(positive) <= k:
        return sorted(int(i) for i in ids[positive])
    picked = rng.choice(ids[positive], size=k, replace=False, p=_normalized(weights[positive]))
    return sorted(int(i) for i in picked)


def _normalized(weights: np.ndarray) -> np.ndarray:
    p = weights / weights.sum()
    return p / p.sum()


# --------------------------------------------------------------------------- the round plan


class PlannedTask(_Section):
    """Where one sampled client trains this round, and why."""

    client_id: int = Field(ge=0)
    kind: ClientKind
    path: Assignment
    resource: str | None  # the resource it is bound to (None: classical client)
    advantage: float | None = None  # A(t) (hybrid clients)
    reason: str
    fallback: bool = False  # would have gone quantum, but its resource was not available
    shots: int = Field(0, ge=0)  # shots reserved on its resource


class SchedulePlan(_Section):
    """The assignment of every sampled client in one round."""

    round: int = Field(ge=0)
    tasks: tuple[PlannedTask, ...]  # ascending client id

    def assignments(self) -> dict[int, Assignment]:
        """client id -> path, the ledger's `RoundOpen.plan`."""
        return {task.client_id: task.path for task in self.tasks}

    def task(self, client_id: int) -> PlannedTask:
        for task in self.tasks:
            if task.client_id == client_id:
                return task
        raise KeyError(client_id)

    def fallbacks(self) -> list[PlannedTask]:
        """Quantum-bound clients moved to classical because their resource was unavailable."""
        return [task for task in self.tasks if task.fallback]

    def shots_by_resource(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for task in self.tasks:
            if task.path == "quantum" and task.resource is not None:
                out[task.resource] = out.get(task.resource, 0) + task.shots
        return out

    def metrics(self) -> dict[str, float]:
        """Flat counts for MLflow: plan.quantum, .classical, .fallback, .hybrid_quantum."""
        quantum = sum(task.path == "quantum" for task in self.tasks)
        hybrid_quantum = sum(t.kind == "hybrid" and t.path == "quantum" for t in self.tasks)
        return {
            "plan.quantum": float(quantum),
            "plan.classical": float(len(self.tasks) - quantum),
            "plan.fallback": float(len(self.fallbacks())),
            "plan.hybrid_quantum": float(hybrid_quantum),
        }


def plan_round(
    round_: int,
    sampled: Sequence[int],
    roster: ClientRoster,
    snapshot: MonitorSnapshot,
    job: QuantumJob | Mapping[int, QuantumJob],
    config: SchedulerConfig,
    gains: GainTracker | None = None,
    classical_seconds: Mapping[int, float] | None = None,
    rng: np.random.Generator | None = None,
) -> SchedulePlan:
    """Each sampled client's path and resource for round `round_`.

    Classical clients: classical. Quantum-enhanced: quantum if Q_k^avail. Hybrid:
    Eq. 9 with A(t) from `advantage_terms`. Q_k^avail needs the resource available
    in `snapshot` and its shots budget not yet spent by clients served before k:
    quantum-enhanced clients are served first, then hybrid ones, each group in
    ascending id order (or in `rng`'s permutation of it, to spread a binding budget
    fairly over rounds). `job` is one job for all clients or one per client id;
    `classical_seconds` optionally gives measured T_C per client id.
    """
    sampled_ids = sorted({int(k) for k in sampled})
    by_kind = {kind: [k for k in sampled_ids if roster.kind(k) == kind] for kind in KINDS}
    left: dict[str, int] = {}
    tasks: dict[int, PlannedTask] = {}
    for k in by_kind["classical"]:
        tasks[k] = PlannedTask(
            client_id=k, kind="classical", path="classical", resource=None, reason="classical"
        )
    for kind in ("quantum_enhanced", "hybrid"):
        order = by_kind[kind]
        if rng is not None:
            order = [order[i] for i in rng.permutation(len(order))]
        for k in order:
            tasks[k] = _plan_one(
                k, kind, roster, snapshot, job, config, gains, classical_seconds, left
            )
    return SchedulePlan(round=round_, tasks=tuple(tasks[k] for k in sampled_ids))


def _plan_one(
    k: int,
    kind: ClientKind,
    roster: ClientRoster,
    snapshot: MonitorSnapshot,
    job: QuantumJob | Mapping[int, QuantumJob],
    config: SchedulerConfig,
    gains: GainTracker | None,
    classical_seconds: Mapping[int, float] | None,
    left: dict[str, int],
) -> PlannedTask:
    name = roster.resource(k)
    if name is None:
        raise ValueError(f"{kind} client {k} is bound to no resource")
    if name not in snapshot.resources:
        raise ValueError(f"client {k}'s resource {name!r} is not in the monitor's snapshot")
    status = snapshot.resources[name]
    client_job = job if isinstance(job, QuantumJob) else job[k]
    shots = client_job.total_shots
    budget = left.setdefault(name, status.state.shots_budget)
    available = status.available and shots <= budget
    if not status.available:
        why_not = f"resource {name} unavailable: {status.reason}"
    elif not available:
        why_not = f"resource {name} shots budget: job needs {shots}, {budget} left this round"
    else:
        why_not = ""

    advantage = None
    if kind == "quantum_enhanced":
        path: Assignment = "quantum" if available else "classical"
        wants_quantum = True
        reason = f"quantum-enhanced on {name}" if available else why_not
    else:
        gain = 0.0 if gains is None else gains.gain(name)
        measured = None if classical_seconds is None else classical_seconds.get(k)
        advantage = advantage_score(client_job, status.state, config, gain, measured)
        path = assign_task(available, advantage, config.tau_q)
        wants_quantum = advantage > config.tau_q
        compare = f"A={advantage:.3g} {'>' if wants_quantum else '<='} tau_Q={config.tau_q}"
        reason = f"Eq. 9: {compare}" if available else f"Eq. 9: {why_not}"
    if path == "quantum":
        left[name] = budget - shots
    return PlannedTask(
        client_id=k,
        kind=kind,
        path=path,
        resource=name,
        advantage=advantage,
        reason=reason,
        fallback=wants_quantum and not available,
        shots=shots if path == "quantum" else 0,
    )
