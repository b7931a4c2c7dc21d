"""Quantum resources: their configuration and a seeded simulator of how available they are.

A quantum resource is a device (or its noisy stand-in) that quantum-enhanced and
hybrid clients are bound to: an executor (``aer`` or ``ibm``), a qubit count and
coupling map, a noise model (parametric or a device snapshot), a shots budget per
round and an availability model. `ResourceSimulator` turns the availability model
into one `ResourceState` per round, the monitor's and the scheduler's view of it.

The simulator is driven by a generator per round (the caller derives it from the run
seed, the round and the resource), and draws, in this fixed order, whatever branch
is taken (so the streams never shift):

    u_t ~ U(0, 1)                    random downtime: down if u_t >= uptime
    a_t ~ Poisson(queue_arrivals)    other users' jobs arriving during round t
    z_t ~ N(0, I_3)                  drift of log p1, log p2, log readout

and computes

    available_t = (t in no outage window) and u_t < uptime
    queue_t     = backlog_{t-1} + a_t                 jobs ahead of ours
    backlog_t   = queue_t - min(queue_t, capacity)    if available_t, else queue_t
    est_wait_t  = queue_t * (job_overhead_s + queue_job_shots * seconds_per_shot)
    x_t         = (1 - reversion) x_{t-1} + drift * z_t        x_{-1} = 0
    p_t         = clip(p_cal * exp(x_t))              p_cal from the noise config

(capacity = `service_jobs_per_round`; None serves the whole queue in an up round).
The drift is a mean-reverting random walk of the log error rates around their
calibration, a stand-in for calibration drift between daily recalibrations. Same
config and same generators give the same states; a `ResourceState` holds everything
the next step needs, so a resumed run continues from its last state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qfl.errors import QuantumResourceUnavailable
from quantum.config import MitigationConfig, NoiseConfig

CouplingName = Literal["line", "ring", "full", "heavy_hex"]
Edge = tuple[int, int]
ONE_QUBIT_OPS = ("sx", "x", "rx", "ry", "u", "u1", "u2", "u3")
TWO_QUBIT_OPS = ("cx", "ecr", "cz")
MAX_P = 1.0  # NoiseConfig bounds of p1 and p2
MAX_READOUT = 0.5  # and of the readout flip probability
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"  # a resource name is one segment of a metric key


class _Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AvailabilityConfig(_Config):
    """When a resource is up, how long its queue is, and how its error rates drift."""

    uptime: float = Field(1.0, ge=0.0, le=1.0, description="P(up) in a round outside outages")
    outages: tuple[tuple[int, int], ...] = Field(
        (), description="rounds [start, end] (inclusive) when the resource is down"
    )
    queue_arrivals: float = Field(0.0, ge=0.0, description="Poisson mean of jobs arriving/round")
    service_jobs_per_round: int | None = Field(
        None, ge=1, description="jobs served per up round; None: the whole queue"
    )
    queue_job_shots: int = Field(4000, ge=0, description="shots of a typical job in the queue")
    seconds_per_shot: float = Field(2e-4, gt=0.0, description="service time of one shot (s)")
    job_overhead_s: float = Field(2.0, ge=0.0, description="fixed service time per job (s)")
    job_failure_rate: float = Field(0.0, ge=0.0, lt=1.0, description="P(a job fails while up)")
    drift: float = Field(0.0, ge=0.0, description="sd of the log error rates' step per round")
    drift_reversion: float = Field(0.1, ge=0.0, le=1.0, description="pull back to calibration")

    @model_validator(mode="after")
    def _check_outages(self) -> AvailabilityConfig:
        for start, end in self.outages:
            if not 0 <= start <= end:
                raise ValueError(f"outage window [{start}, {end}]: need 0 <= start <= end")
        return self

    def in_outage(self, round_: int) -> tuple[int, int] | None:
        """The outage window that covers `round_`, if any."""
        for start, end in self.outages:
            if start <= round_ <= end:
                return start, end
        return None

    def job_wait_s(self) -> float:
        """Service time of one typical queued job (s)."""
        return self.job_overhead_s + self.queue_job_shots * self.seconds_per_shot


class ResourceConfig(_Config):
    """One quantum resource: executor, qubits and coupling, noise, budget and availability."""

    name: str = Field(pattern=NAME_PATTERN, description="unique; used in metric keys")
    executor: Literal["aer", "ibm"] = "aer"
    backend: str | None = Field(None, description="ibm: fake device (fake_manila) or device")
    qubits: int = Field(ge=1, le=1000)
    coupling: CouplingName | tuple[tuple[int, int], ...] = Field(
        "line", description="line, ring, full, heavy_hex, or explicit edges [[a, b], ...]"
    )
    noise: NoiseConfig = NoiseConfig()
    shots_budget: int = Field(10_000_000, ge=1, description="shots this resource gives a round")
    depth_limit: int | None = Field(None, ge=1, description="Algorithm 1's D_max, if any")
    mitigation: MitigationConfig = Field(
        MitigationConfig(), description="error mitigation its jobs run with (default none)"
    )
    availability: AvailabilityConfig = AvailabilityConfig()

    @model_validator(mode="after")
    def _check(self) -> ResourceConfig:
        if self.executor == "ibm" and not self.backend:
            raise ValueError(f"resource {self.name}: executor ibm needs backend (e.g. fake_manila)")
        if not isinstance(self.coupling, str):
            for a, b in self.coupling:
                if not (0 <= a < self.qubits and 0 <= b < self.qubits) or a == b:
                    raise ValueError(
                        f"resource {self.name}: coupling edge ({a}, {b}) is not a pair of "
                        f"{self.qubits} qubits"
                    )
        device = self.noise.device or ""
        if device.startswith("generic:") and int(device.split(":")[1]) < self.qubits:
            raise ValueError(
                f"resource {self.name}: noise device {device} has fewer than {self.qubits} qubits"
            )
        return self

    def edges(self) -> tuple[Edge, ...]:
        """The coupling map as undirected pairs (a < b), sorted."""
        return coupling_edges(self.coupling, self.qubits)

    def check_fits(self, qubits: int) -> None:
        """Raise QuantumResourceUnavailable if a `qubits`-qubit layer cannot run here."""
        if qubits > self.qubits:
            raise QuantumResourceUnavailable(
                f"resource {self.name} has {self.qubits} qubits, the layer needs {qubits}"
            )


def coupling_edges(coupling: CouplingName | Sequence[Sequence[int]], n: int) -> tuple[Edge, ...]:
    """Undirected coupling pairs (a < b), sorted, of a named pattern or an explicit edge list.

    ``heavy_hex`` is the connected fragment of the smallest heavy-hex lattice (qiskit's
    `CouplingMap.from_heavy_hex`, odd distance d, (5 d^2 - 2 d - 1) / 2 qubits) with at
    least n qubits: its first n qubits in breadth-first order from qubit 0, renumbered
    0..n-1 in that order.
    """
    if not isinstance(coupling, str):
        return tuple(sorted({(min(a, b), max(a, b)) for a, b in coupling}))
    if n < 2:
        return ()
    if coupling == "line":
        return tuple((i, i + 1) for i in range(n - 1))
    if coupling == "ring":
        return tuple(sorted({(min(i, (i + 1) % n), max(i, (i + 1) % n)) for i in range(n)}))
    if coupling == "full":
        return tuple(combinations(range(n), 2))
    if coupling == "heavy_hex":
        return _heavy_hex(n)
    raise ValueError(f"unknown coupling {coupling!r} (line, ring, full, heavy_hex or edges)")


def _heavy_hex(n: int) -> tuple[Edge, ...]:
    from qiskit.transpiler import CouplingMap

    d = 3
    while (5 * d * d - 2 * d - 1) // 2 < n:
        d += 2
    lattice = CouplingMap.from_heavy_hex(d)
    neighbours: dict[int, set[int]] = {}
    for a, b in lattice.get_edges():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    order, seen = [0], {0}
    for node in order:  # breadth-first; `order` grows while we walk it
        for nb in sorted(neighbours[node]):
            if nb not in seen and len(order) < n:
                seen.add(nb)
                order.append(nb)
    index = {q: i for i, q in enumerate(order)}
    pairs = {
        (min(index[a], index[b]), max(index[a], index[b]))
        for a, b in lattice.get_edges()
        if a in index and b in index
    }
    return tuple(sorted(pairs))


def unique_resources(resources: Sequence[ResourceConfig]) -> dict[str, ResourceConfig]:
    """Resources by name; ValueError on a repeated name."""
    out: dict[str, ResourceConfig] = {}
    for resource in resources:
        if resource.name in out:
            raise ValueError(f"resource name {resource.name!r} is used twice")
        out[resource.name] = resource
    return out


class ErrorRates(_Config):
    """Mean 1-qubit gate, 2-qubit gate and readout error probabilities."""

    p1: float = Field(0.0, ge=0.0, le=MAX_P)
    p2: float = Field(0.0, ge=0.0, le=MAX_P)
    readout: float = Field(0.0, ge=0.0, le=MAX_READOUT)


def calibration(noise: NoiseConfig, seed: int = 0) -> ErrorRates:
    """The error rates a noise config starts from (drift is applied around these).

    Parametric: its p1, p2 and readout. Device: the mean reported error of the
    device's physical 1-qubit gates (sx, x, ...; rz is virtual), 2-qubit gates
    (cx, ecr, cz) and measurements, from its calibration (`backend.target`).
    """
    if noise.kind == "none":
        return ErrorRates()
    if noise.kind == "parametric":
        return ErrorRates(p1=noise.p1, p2=noise.p2, readout=noise.readout)
    assert noise.device is not None  # checked by NoiseConfig
    from quantum.noise import device_backend  # qiskit: only for a device snapshot

    target = device_backend(noise.device, seed).target

    def mean_error(names: Sequence[str], cap: float) -> float:
        errors = [
            props.error
            for name in names
            if name in target.operation_names
            for props in target[name].values()
            if props is not None and props.error is not None
        ]
        return min(cap, float(np.mean(errors))) if errors else 0.0

    return ErrorRates(
        p1=mean_error(ONE_QUBIT_OPS, MAX_P),
        p2=mean_error(TWO_QUBIT_OPS, MAX_P),
        readout=mean_error(("measure",), MAX_READOUT),
    )


class ResourceState(_Config):
    """A resource in one round: up or down, its queue, its drifted error rates, its costs."""

    name: str
    round: int = Field(ge=0)
    available: bool
    reason: str | None = None  # why it is down (None when available)
    queue_length: int = Field(ge=0)  # jobs ahead of ours this round
    backlog: int = Field(ge=0)  # jobs left after this round's service (next round starts here)
    est_wait_s: float = Field(ge=0.0)  # queue_length x service time of a typical job
    p1: float = Field(ge=0.0, le=MAX_P)
    p2: float = Field(ge=0.0, le=MAX_P)
    readout: float = Field(ge=0.0, le=MAX_READOUT)
    drift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # x_t: log offsets of p1, p2, readout
    noise: NoiseConfig = NoiseConfig()  # the calibrated noise the drift applies to
    executor: Literal["aer", "ibm"] = "aer"
    qubits: int = Field(ge=1)
    seconds_per_shot: float = Field(gt=0.0)
    job_overhead_s: float = Field(ge=0.0)
    job_failure_rate: float = Field(0.0, ge=0.0, lt=1.0)
    shots_budget: int = Field(ge=1)

    def noise_config(self) -> NoiseConfig:
        """The noise a job submitted this round sees, for the client's executor.

        Parametric noise keeps its thermal relaxation and takes the drifted p1, p2,
        readout. A device snapshot is returned as is while its error rates have not
        drifted (x_t == 0); once drifted, it becomes the parametric model with the
        drifted mean rates (NoiseConfig cannot scale a device snapshot).
        """
        if self.noise.kind == "none":
            return self.noise
        if self.noise.kind == "device" and not any(self.drift):
            return self.noise
        fields = self.noise.model_dump() if self.noise.kind == "parametric" else {}
        fields |= {"kind": "parametric", "p1": self.p1, "p2": self.p2, "readout": self.readout}
        return NoiseConfig(**fields)

    def job_seconds(self, shots: int) -> float:
        """Service time of a job of `shots` shots, once it reaches the head of the queue."""
        return self.job_overhead_s + shots * self.seconds_per_shot

    def expected_seconds(self, shots: int) -> float:
        """Queue wait plus service time of a job of `shots` shots submitted this round."""
        return self.est_wait_s + self.job_seconds(shots)


def job_failure(state: ResourceState, shots: int, rng: np.random.Generator) -> str | None:
    """Why a job of `shots` shots submitted this round fails, or None if it runs.

    Draws one uniform whatever the outcome. Reasons: the resource is down, the job
    alone exceeds the round's shots budget, or a transient failure (probability
    `job_failure_rate`).
    """
    u = rng.random()
    if not state.available:
        return f"resource {state.name} down: {state.reason}"
    if shots > state.shots_budget:
        return f"resource {state.name}: {shots} shots exceed the budget of {state.shots_budget}"
    if u < state.job_failure_rate:
        return f"resource {state.name}: transient job failure"
    return None


class ResourceSimulator:
    """One resource's availability, queue and error-rate drift, round after round.

    `step(round_, rng)` must see increasing rounds; start from a saved state with
    `ResourceSimulator(config, previous=state)` to resume a run.
    """

    def __init__(
        self,
        config: ResourceConfig,
        *,
        seed: int = 0,
        previous: ResourceState | None = None,
        rates: ErrorRates | None = None,
    ):
        """`seed` seeds a generic:N device's calibration; `rates` skips computing it."""
        if previous is not None and previous.name != config.name:
            raise ValueError(f"state of {previous.name!r} cannot resume resource {config.name!r}")
        self.config = config
        self.calibration = rates if rates is not None else calibration(config.noise, seed)
        self.previous = previous

    def step(self, round_: int, rng: np.random.Generator) -> ResourceState:
        """The state of round `round_`, drawing from `rng` (see the module docstring)."""
        if self.previous is not None and round_ <= self.previous.round:
            raise ValueError(f"round {round_} does not follow round {self.previous.round}")
        avail = self.config.availability
        u = rng.random()
        arrivals = int(rng.poisson(avail.queue_arrivals))
        z = rng.standard_normal(3)

        window = avail.in_outage(round_)
        if window is not None:
            available, reason = False, f"outage window [{window[0]}, {window[1]}]"
        elif u >= avail.uptime:
            available, reason = False, "random downtime"
        else:
            available, reason = True, None

        backlog = 0 if self.previous is None else self.previous.backlog
        queue = backlog + arrivals
        served = 0
        if available:
            capacity = avail.service_jobs_per_round
            served = queue if capacity is None else min(queue, capacity)

        x_prev = np.zeros(3) if self.previous is None else np.asarray(self.previous.drift)
        x = (1.0 - avail.drift_reversion) * x_prev + avail.drift * z
        cal = self.calibration
        state = ResourceState(
            name=self.config.name,
            round=round_,
            available=available,
            reason=reason,
            queue_length=queue,
            backlog=queue - served,
            est_wait_s=queue * avail.job_wait_s(),
            p1=_drifted(cal.p1, x[0], MAX_P),
            p2=_drifted(cal.p2, x[1], MAX_P),
            readout=_drifted(cal.readout, x[2], MAX_READOUT),
            drift=(float(x[0]), float(x[1]), float(x[2])),
            noise=self.config.noise,
            executor=self.config.executor,
            qubits=self.config.qubits,
            seconds_per_shot=avail.seconds_per_shot,
            job_overhead_s=avail.job_overhead_s,
            job_failure_rate=avail.job_failure_rate,
            shots_budget=self.config.shots_budget,
        )
        self.previous = state
        return state


def _drifted(p: float, x: float, cap: float) -> float:
    return min(cap, p * math.exp(x))
