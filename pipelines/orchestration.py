"""Hybrid orchestration of a run: who trains where each round, and what happened.

`Orchestrator` is the driver's bookkeeping between the pure pieces (DESIGN.md, one
round, step 3): it steps each quantum resource's availability simulator, turns
the monitor's snapshot into the round's plan (`pipelines.scheduler.plan_round`,
Eq. 9), builds the client tasks (the quantum path carries the resource's current
noise and shots; a job the resource's model says fails this round carries that
failure, and the runner falls back), and afterwards records reliability, the
observed gains of quantum against classical updates, the resource job outcomes
and the round's metrics. It imports no ray: the run wires it to the monitor
actor, the ledger keeper and the client pool.

Seeds: the roster (client kinds and bindings) comes from (seed, ROSTER_STREAM);
resource r's draws in round t from (seed, t, RESOURCE_STREAM, r); a task's
simulated job failure from (seed, t, JOB_STREAM, client). Same config, same seed:
same roster, availability, plans and failures.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from federated.messages import ClientTask, ClientUpdate
from ledger.records import Assignment, Fallback
from pipelines.scheduler import (
    KINDS,
    ClientRoster,
    GainTracker,
    QuantumJob,
    ReliabilityTracker,
    SchedulePlan,
    SchedulerConfig,
    assign_roster,
    plan_round,
    select_clients,
)
from qfl.errors import QuantumResourceUnavailable
from quantum.circuits import build_circuit
from quantum.compile import compile_with
from quantum.config import CompileConfig, MitigationConfig, NoiseConfig, QuantumConfig
from quantum.monitor import JobOutcome, MonitorSnapshot
from quantum.resources import (
    ResourceConfig,
    ResourceSimulator,
    ResourceState,
    job_failure,
    unique_resources,
)

ROSTER_STREAM = 4
RESOURCE_STREAM = 3
JOB_STREAM = 5
PATHS = ("quantum", "classical", "fallback")


def exact_quantum(quantum: QuantumConfig) -> QuantumConfig:
    """The classical path's quantum layer: the same circuit, simulated exactly."""
    fields = quantum.model_dump() | {"executor": "exact", "shots": None, "noise": NoiseConfig()}
    fields |= {"backend": None, "mitigation": MitigationConfig(), "compilation": CompileConfig()}
    return QuantumConfig.model_validate(fields)


def resource_quantum(
    quantum: QuantumConfig, resource: ResourceConfig, state: ResourceState
) -> QuantumConfig:
    """The quantum path's layer on `resource` this round: its executor and current noise,
    its mitigation, and its circuits compiled to its coupling map and depth limit
    (Algorithm 1; a device snapshot or an IBM backend brings its own coupling map)."""
    noise = state.noise_config()
    own_map = resource.executor == "ibm" or noise.kind == "device"
    compilation = CompileConfig(
        coupling=None if own_map else resource.edges(),
        coupling_qubits=None if own_map else resource.qubits,
        depth_limit=resource.depth_limit,
    )
    fields = quantum.model_dump() | {
        "executor": resource.executor,
        "backend": resource.backend,
        "noise": noise,
        "shots": quantum.shots or 1024,
        "mitigation": resource.mitigation,
        "compilation": compilation,
    }
    return QuantumConfig.model_validate(fields)


def weighted_sample(weights: np.ndarray, n: int, k: int, rng: np.random.Generator) -> list[int]:
    """Up to k of n clients, sampled by reliability weight (`select_clients`)."""
    return select_clients(rng, range(n), weights[:n], k)


class Orchestrator:
    """Roster, resource simulators, reliability and gains of one run (no ray)."""

    def __init__(
        self,
        *,
        seed: int,
        n_clients: int,
        clients,
        resources: Sequence[ResourceConfig],
        scheduler: SchedulerConfig,
        quantum: QuantumConfig | None,
        examples: Sequence[int],
        epochs: int,
        batch_size: int,
    ):
        self.seed = seed
        self.n_clients = n_clients
        self.config = scheduler
        self.quantum = quantum
        self.resources = unique_resources(resources)
        names = list(self.resources)
        roster_rng = np.random.default_rng(np.random.SeedSequence([seed, ROSTER_STREAM]))
        self.roster: ClientRoster = assign_roster(clients, n_clients, names, roster_rng)
        self.simulators = {
            name: ResourceSimulator(cfg, seed=seed) for name, cfg in self.resources.items()
        }
        self.states: dict[str, ResourceState] = {}
        self.reliability = ReliabilityTracker.from_config(scheduler)
        self.gains = GainTracker(scheduler.gain_window)
        self.jobs = self._jobs(examples, epochs, batch_size)
        self.layers = {name: self._layers_within(cfg) for name, cfg in self.resources.items()}

    def _layers_within(self, resource: ResourceConfig) -> int | None:
        """L_k: the most layers whose circuit, compiled to the resource, meets its depth limit.

        None: all layers (no limit, or no quantum layer). Heterogeneous depth: clients of
        this resource train only the first L_k layers; aggregation averages each layer
        over the clients that hold it (`federated.layerwise`).
        """
        if self.quantum is None or resource.depth_limit is None:
            return None
        for layers in range(self.quantum.layers, 0, -1):
            shape = self.quantum.circuit_config().model_copy(update={"layers": layers})
            compiled = compile_with(
                build_circuit(shape).circuit,
                CompileConfig(
                    coupling=resource.edges(),
                    coupling_qubits=resource.qubits,
                    depth_limit=resource.depth_limit,
                ),
                seed=self.seed,
            )
            if compiled.report.met:
                return None if layers == self.quantum.layers else layers
        raise QuantumResourceUnavailable(
            f"resource {resource.name}: even one layer exceeds depth_limit={resource.depth_limit}"
        )

    def _jobs(self, examples: Sequence[int], epochs: int, batch: int) -> dict[int, QuantumJob]:
        if self.quantum is None:
            return {}
        shots = self.quantum.shots or 1024
        return {
            k: QuantumJob.from_circuit(
                self.quantum.circuit_config(),
                examples=max(1, int(n) * epochs),
                shots=shots,
                batch=batch,
                gradient=self.quantum.gradient,
            )
            for k, n in enumerate(examples)
        }

    # ------------------------------------------------------------------ checkpoints

    def state(self) -> dict:
        """JSON-able state for a checkpoint: reliability, gains, each resource's last state."""
        return {
            "reliability": self.reliability.state(),
            "gains": self.gains.state(),
            "resources": {name: s.model_dump(mode="json") for name, s in self.states.items()},
        }

    def load_state(self, state: Mapping) -> None:
        """Continue from `state()`: the simulators step on from the saved resource states."""
        self.reliability.load_state(state["reliability"])
        self.gains = GainTracker.from_state(state["gains"])
        for name, saved in state["resources"].items():
            previous = ResourceState.model_validate(saved)
            self.states[name] = previous
            self.simulators[name] = ResourceSimulator(
                self.resources[name], seed=self.seed, previous=previous
            )

    # ------------------------------------------------------------------ before a round

    def step_resources(self, round_: int) -> list[ResourceState]:
        """Advance every resource to round `round_` (in order; again for the same round:
        the states it already has, e.g. after a resume)."""
        if self.states and all(state.round == round_ for state in self.states.values()):
            return list(self.states.values())
        states = []
        for i, (name, simulator) in enumerate(self.simulators.items()):
            words = [self.seed, round_, RESOURCE_STREAM, i]
            state = simulator.step(round_, np.random.default_rng(np.random.SeedSequence(words)))
            self.states[name] = state
            states.append(state)
        return states

    def sampler(self, round_: int) -> Callable[[int, int, np.random.Generator], list[int]]:
        """Round `round_`'s client sampler: reliability-weighted, cooled-down clients out."""
        ids = list(range(self.n_clients))
        weights = self.reliability.selection_weights(ids, round_, self.config.min_selection_weight)
        return functools.partial(weighted_sample, weights)

    def plan(self, round_: int, sampled: Sequence[int], snapshot: MonitorSnapshot) -> SchedulePlan:
        """Each sampled client's path and resource (Eq. 9), from the monitor's snapshot."""
        jobs = {k: self.jobs[k] for k in sampled} if self.jobs else {}
        if not jobs:
            jobs = {k: _NO_JOB for k in sampled}
        return plan_round(
            round_, sampled, self.roster, snapshot, jobs, self.config, gains=self.gains
        )

    def assigner(
        self, round_: int, snapshot: MonitorSnapshot
    ) -> Callable[[Sequence[int]], dict[int, Assignment]]:
        """sampled -> the plan's assignments (what the ledger's RoundOpen records)."""
        return functools.partial(_assignments, self, round_, snapshot)

    def tasks(self, plan: SchedulePlan, seeds: Mapping[int, int]) -> list[ClientTask]:
        """The round's client tasks; quantum ones carry the resource's config and failure."""
        out = []
        for planned in plan.tasks:
            k = planned.client_id
            task = {"client_id": k, "round": plan.round, "seed": seeds[k], "probe": True}
            if planned.path == "quantum" and planned.resource is not None:
                task |= self._quantum_task(plan.round, k, planned.resource, planned.shots)
            elif planned.fallback:
                task |= {"resource": planned.resource, "fallback": planned.reason}
            out.append(ClientTask(**task))
        return out

    def _quantum_task(self, round_: int, client: int, name: str, shots: int) -> dict:
        state = self.states[name]
        words = [self.seed, round_, JOB_STREAM, client]
        failure = job_failure(state, shots, np.random.default_rng(np.random.SeedSequence(words)))
        limit = self.config.max_p2
        if failure is None and limit is not None and state.p2 > limit:
            failure = f"2-qubit error rate {state.p2:.4g} above scheduler.max_p2={limit}"
        return {
            "path": "quantum",
            "resource": name,
            "quantum": resource_quantum(self.quantum, self.resources[name], state),
            "job_failure": failure,
            "layers_active": self.layers.get(name),
        }

    # ------------------------------------------------------------------ after a round

    def fallbacks(self, updates: Sequence[ClientUpdate]) -> list[Fallback]:
        """Ledger records: clients moved off their resource at planning or at run time."""
        records = []
        for u in updates:
            if u.path == "fallback" and u.resource is not None:
                reason = u.fallback_reason or "quantum job failed"
                records.append(
                    Fallback(
                        client_id=u.client_id, round=u.round, resource=u.resource, reason=reason
                    )
                )
        return sorted(records, key=lambda r: r.client_id)

    def observe(
        self,
        plan: SchedulePlan,
        updates: Sequence[ClientUpdate],
        accepted: set[int],
    ) -> list[JobOutcome]:
        """Record reliability and gains; return the quantum jobs' outcomes for the monitor."""
        by_client = {u.client_id: u for u in updates}
        outcomes = []
        for planned in plan.tasks:
            k = planned.client_id
            update = by_client.get(k)
            self.reliability.record(k, plan.round, ok=k in accepted)
            if update is not None and update.probe_gain is not None:
                path = "quantum" if update.path == "quantum" else "classical"
                self.gains.observe(path, update.probe_gain, update.resource)
            if planned.path != "quantum" or planned.resource is None:
                continue
            ok = update is not None and update.path == "quantum"
            reason = None if ok else _failure_reason(update)
            outcomes.append(
                JobOutcome(
                    resource=planned.resource,
                    client_id=k,
                    round=plan.round,
                    ok=ok,
                    reason=reason,
                    seconds=update.seconds if update is not None else 0.0,
                    shots=planned.shots if ok else 0,
                )
            )
        return outcomes

    def metrics(self, plan: SchedulePlan, updates: Sequence[ClientUpdate]) -> dict[str, float]:
        """Updates per path, mean client loss per kind, the plan's counts."""
        out = {f"updates.{path}": float(sum(u.path == path for u in updates)) for path in PATHS}
        if self.quantum is not None:  # heterogeneous depth: the layers each resource trains
            full = self.quantum.layers
            out |= {f"layers.{name}": float(k or full) for name, k in self.layers.items()}
        for kind in KINDS:
            losses = [u.loss for u in updates if self.roster.kind(u.client_id) == kind]
            if losses:
                out[f"client_loss.{kind}"] = float(np.mean(losses))
        return out | plan.metrics()


_NO_JOB = QuantumJob(
    qubits=1, gates_1q=0, gates_2q=0, examples=1, circuits_per_example=1, shots=1
)  # a run without a quantum layer: every client is classical, the job is never used


def _assignments(
    orchestrator: Orchestrator, round_: int, snapshot: MonitorSnapshot, sampled: Sequence[int]
) -> dict[int, Assignment]:
    return orchestrator.plan(round_, sampled, snapshot).assignments()


def _failure_reason(update: ClientUpdate | None) -> str:
    if update is None:
        return "the client produced no update"
    return update.fallback_reason or f"ran on the {update.path} path"


def advantage_metrics(plan: SchedulePlan) -> dict[str, float]:
    """Mean A(t) of the round's hybrid clients per resource (finite scores only)."""
    scores: dict[str, list[float]] = {}
    for task in plan.tasks:
        if (
            task.advantage is not None
            and task.resource is not None
            and math.isfinite(task.advantage)
        ):
            scores.setdefault(task.resource, []).append(task.advantage)
    return {f"advantage.{name}": float(np.mean(v)) for name, v in scores.items()}
