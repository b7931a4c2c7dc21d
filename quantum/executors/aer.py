"""Shot-based execution on qiskit-aer, and the machinery shared with the IBM executor.

`ShotExecutor` is what a shot-based executor has in common: it turns
(inputs, weights) into one matrix of parameter values, expands it with the
parameter-shift rule (or SPSA) so that ALL evaluations of a batch go to the
backend in ONE call, and assembles expectations and Jacobians. A subclass only
says how one call runs (`_evaluate`): `AerExecutor` on Aer's EstimatorV2,
`IBMExecutor` (quantum/executors/ibm.py) on qiskit-ibm-runtime's.

Value columns: every executor here orders parameter values as
[encoding slots x[0..S) | weights theta[0..P)], shape (B, S + P). A circuit
binds values in the order of `QuantumCircuit.parameters` (sorted by name:
theta before x), so each circuit that runs carries the value column of each
of its parameters (`Group.columns`).

Light cones: a gate outside the backward light cone of an observable cannot
change its expectation value, noisy or not (every gate and its attached noise
is a trace-preserving channel, whose adjoint maps the identity to itself), and
Aer drops qubits that no gate touches. So `AerExecutor` evaluates each
observable, or all of them together when that is cheaper, on the gates in its
light cone only, and shifts only the parameters found there; the gradient of
the others is exactly 0. The values are the same as on the full circuit.

Shots: `AerExecutor` asks Aer for exact (noisy) expectation values
(precision 0: density matrix, or noise trajectories on large circuits) and
then draws the shot noise itself: each Pauli term of an observable is
estimated from `shots` +-1 outcomes, 2 * Binomial(shots, (1 + e) / 2) / shots - 1,
so the standard error is sqrt((1 - e^2) / shots) as on hardware (Aer's own
`precision` would add N(0, precision^2) noise, from a generator re-seeded
identically for every pub and every call). Readout errors of the noise model,
which Aer's estimator ignores (it measures nothing), enter exactly: with
independent per-qubit errors the measured mean of a Pauli string is a fixed
combination of the exact expectations of its sub-strings (`readout_expansion`;
symmetric flips just scale <P> by prod_q (1 - 2 p_q)); the shots are then
drawn around that mean.

Compilation and mitigation: a device snapshot, or a coupling map
(`CompileConfig.coupling`), has the circuit compiled once by Algorithm 1
(quantum/compile.py, cached in the executor's `CompileCache`). Error mitigation
(quantum/mitigation.py) is planned once per group at construction: its folded
circuits per scale factor (in the device's basis) and the Pauli strings that
readout inversion and parity post-selection need; at run time they go to the
backend in the same single call, and the group's outputs are rebuilt from them
(readout inverse, parity ratio, extrapolation to zero noise).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from itertools import count, product
from typing import Literal

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Parameter, ParameterExpression
from qiskit.providers import BackendV2
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import Target
from qiskit_aer.noise import NoiseModel

from qfl.errors import QuantumError
from quantum.circuits import VariationalCircuit
from quantum.compile import CompileCache, CompiledCircuit, compile_with, translate
from quantum.config import CompileConfig, Folding, MitigationConfig, NoiseConfig
from quantum.executors.base import Executor, Overhead
from quantum.mitigation import (
    OutputMap,
    achieved_scale,
    calibrate,
    calibration_circuit,
    check_scales,
    extrapolate,
    fold_circuit,
    measurement_settings,
    observable_bounds,
    output_map,
    parity_operator,
    readout_from_calibration,
)
from quantum.noise import build_noise_model, device_backend, device_noise_model
from quantum.parameter_shift import assemble, shifted_values, spsa_assemble, spsa_values

GradientMethod = Literal["parameter_shift", "spsa"]

# gates exp(-i t P / 2), P a Pauli string (p and u1 are rz up to a global phase):
# the two-term parameter-shift rule holds for a parameter that enters one of them once as +-t + c
SHIFT_RULE_GATES = frozenset({"rx", "ry", "rz", "p", "u1", "rxx", "ryy", "rzz", "rzx"})
DEFAULT_PRECISION = 1 / 32  # 1024 shots
CALIBRATION_STREAM = 0x5EAD  # readout calibration's random stream, next to the seed


@dataclass(frozen=True)
class Group:
    """Observables evaluated together on one circuit (the full one, or their light cone)."""

    outputs: np.ndarray  # (O_g,) int: indices into the executor's observables
    circuit: QuantumCircuit  # what runs
    columns: np.ndarray  # (n_g,) int: value column of each of circuit.parameters, in that order
    observables: tuple[SparsePauliOp, ...]  # O_g operators on circuit's qubits
    cost: float  # relative cost of one evaluation (one row of values)
    index: int = 0  # position among all groups of an executor's plans (survives pickling)


def value_columns(circuit: VariationalCircuit) -> dict[Parameter, int]:
    """Column of every circuit parameter in the (B, S + P) value matrix [slots | weights]."""
    slots = {p: i for i, p in enumerate(circuit.slots)}
    n_slots = len(slots)
    return slots | {p: n_slots + j for j, p in enumerate(circuit.weights)}


def values_matrix(
    circuit: VariationalCircuit, inputs: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """(B, F) features and (P,) weights -> (B, S + P) values [slot angles | weights]."""
    inputs = np.asarray(inputs, dtype=float)
    weights = np.asarray(weights, dtype=float)
    if inputs.ndim != 2 or inputs.shape[1] != circuit.num_features:
        raise QuantumError(f"inputs must be (B, {circuit.num_features}), got {inputs.shape}")
    if weights.shape != (circuit.num_weights,):
        raise QuantumError(f"weights must be ({circuit.num_weights},), got {weights.shape}")
    slots = circuit.slot_values(inputs)  # (B, S)
    return np.concatenate([slots, np.broadcast_to(weights, (len(inputs), len(weights)))], axis=1)


def compile_for(
    circuit: VariationalCircuit,
    config: CompileConfig,
    *,
    seed: int,
    cache: CompileCache,
    device: BackendV2 | None = None,
) -> tuple[CompiledCircuit, tuple[SparsePauliOp, ...]]:
    """Algorithm 1 onto `device` (or config.coupling), cached; observables on physical qubits.

    Only compilations that keep the two-term parameter-shift rule are accepted.
    """
    name = "coupling" if device is None else f"{device.name}:{device.num_qubits}:{seed}"
    key = f"{name}|{config.model_dump_json()}|seed={seed}"
    target = None if device is None else device.target
    compiled = cache.get(
        circuit.circuit,
        key,
        lambda: compile_with(
            circuit.circuit, config, seed=seed, target=target, accept=shift_rule_holds
        ),
    )
    return compiled, tuple(compiled.apply_layout(op) for op in circuit.observables)


def shift_rule_holds(circuit: QuantumCircuit) -> bool:
    """Whether `check_shift_rule` accepts the circuit."""
    try:
        check_shift_rule(circuit)
    except QuantumError:
        return False
    return True


def check_shift_rule(circuit: QuantumCircuit) -> None:
    """Raise unless every parameter enters exactly one rotation gate, as +-t + const."""
    seen: dict[Parameter, str] = {}
    for instruction in circuit.data:
        for param in instruction.operation.params:
            if not isinstance(param, ParameterExpression):
                continue
            name = instruction.operation.name
            for p in param.parameters:
                if name not in SHIFT_RULE_GATES or not unit_slope(param, p):
                    raise QuantumError(
                        f"parameter {p} enters gate {name!r} as {param}: the parameter-shift rule "
                        f"needs it once, in one of {sorted(SHIFT_RULE_GATES)}, as +-t + const"
                    )
                if p in seen:
                    raise QuantumError(
                        f"parameter {p} enters two gates ({seen[p]!r}, {name!r}); the two-term "
                        "parameter-shift rule needs one (try optimization_level=0)"
                    )
                seen[p] = name


def unit_slope(expression: ParameterExpression, parameter: Parameter) -> bool:
    """Whether d expression / d parameter is the constant +1 or -1."""
    slope = expression.gradient(parameter)
    if isinstance(slope, ParameterExpression) and slope.parameters:
        return False  # not linear in the parameter
    return bool(np.isclose(abs(complex(slope)), 1.0))


def pauli_support(op: SparsePauliOp) -> set[int]:
    """Qubits on which some term of `op` acts non-trivially."""
    acting = np.logical_or(op.paulis.z, op.paulis.x).any(axis=0)  # (n_qubits,)
    return {int(q) for q in np.flatnonzero(acting)}


def light_cone(circuit: QuantumCircuit, qubits: set[int]) -> tuple[QuantumCircuit, set[int]]:
    """The gates that can influence an observable on `qubits`, and the qubits they touch."""
    support = set(qubits)
    kept = []
    for instruction in reversed(circuit.data):
        if instruction.operation.name == "barrier":
            continue
        touched = {circuit.find_bit(q).index for q in instruction.qubits}
        if touched & support:
            kept.append(instruction)
            support |= touched
    reduced = circuit.copy_empty_like()
    for instruction in reversed(kept):
        reduced.append(instruction)
    return reduced, support


def make_group(
    outputs: Sequence[int],
    circuit: QuantumCircuit,
    observables: Sequence[SparsePauliOp],
    columns: dict[Parameter, int],
    *,
    reduce: bool,
    noisy: bool,
) -> Group:
    """A group of observables on `circuit` (cut to their light cone if `reduce`)."""
    ops = tuple(observables[k] for k in outputs)
    support = set().union(*(pauli_support(op) for op in ops))
    if reduce:
        circuit, width = light_cone(circuit, support)
    else:
        width = set(range(circuit.num_qubits))
    gates = max(1, sum(1 for inst in circuit.data if inst.operation.name != "barrier"))
    cost = gates * float(4 if noisy else 2) ** len(width)  # density matrix when noisy
    cols = np.array([columns[p] for p in circuit.parameters], dtype=int)
    return Group(np.asarray(outputs, dtype=int), circuit, cols, ops, cost)


def plan_groups(
    circuit: QuantumCircuit,
    observables: Sequence[SparsePauliOp],
    columns: dict[Parameter, int],
    *,
    lightcone: bool,
    noisy: bool,
) -> list[tuple[Group, ...]]:
    """Candidate partitions: all observables on one circuit; with light cones, one each."""
    everything = range(len(observables))
    joint = (make_group(everything, circuit, observables, columns, reduce=lightcone, noisy=noisy),)
    plans = [joint]
    if lightcone and len(observables) > 1:
        plans.append(
            tuple(
                make_group([k], circuit, observables, columns, reduce=True, noisy=noisy)
                for k in everything
            )
        )
    counter = count()
    return [tuple(replace(g, index=next(counter)) for g in plan) for plan in plans]


def cheapest(plans: list[tuple[Group, ...]], rows: Callable[[int], int]) -> tuple[Group, ...]:
    """The plan of least total cost when a group with n parameters needs rows(n) evaluations."""
    return min(plans, key=lambda plan: sum(g.cost * rows(len(g.columns)) for g in plan))


def _labels(observables: Sequence[SparsePauliOp]) -> list[str]:
    return [label for op in observables for label in op.paulis.to_labels()]


def _translated(
    circuit: QuantumCircuit, target: Target | None, basis_gates: Sequence[str] | None
) -> QuantumCircuit:
    return translate(circuit, target=target, basis_gates=basis_gates)


def _folded(
    circuit: QuantumCircuit,
    scale: float,
    method: Folding,
    target: Target | None,
    basis_gates: Sequence[str] | None,
) -> tuple[QuantumCircuit, float]:
    """The folded circuit in the device's basis, and the noise scale it reached."""
    if scale == 1.0:
        return circuit, 1.0
    folded = fold_circuit(circuit, scale, method)
    return _translated(folded, target, basis_gates), achieved_scale(circuit, folded)


@dataclass(frozen=True)
class Mitigated:
    """How one group's outputs are mitigated: its circuits per noise scale and the output map."""

    groups: tuple[Group, ...]  # one per scale factor (just the group itself without zne)
    scales: tuple[float, ...]  # noise scale each circuit reached
    output: OutputMap  # measured strings -> outputs (readout inverse not yet applied)
    bounds: np.ndarray  # (O_g,) |<O>| <= bound


class ShotExecutor(Executor):
    """Expectations and Jacobians from batched estimator calls; subclasses run the calls.

    `calls` counts backend calls: one per `expectations` and one per `jacobians`
    (plus one per readout calibration). With `mitigation`, the folded circuits of
    every scale factor and the extra Pauli strings that readout inversion and
    parity post-selection need run in that same call; the parameter-shift rule
    then differentiates the mitigated estimator (each logical parameter shifted in
    every folded copy of its gate). `overhead()` counts circuits and shots.
    """

    def __init__(
        self,
        circuit: VariationalCircuit,
        *,
        run_circuit: QuantumCircuit,
        observables: Sequence[SparsePauliOp],
        seed: int,
        gradient: GradientMethod = "parameter_shift",
        spsa_samples: int = 16,
        spsa_step: float = 0.1,
        lightcone: bool = False,
        noisy: bool = True,
        mitigation: MitigationConfig | None = None,
        physical_qubits: Sequence[int] | None = None,
        target: Target | None = None,
        basis_gates: Sequence[str] | None = None,
        cache: CompileCache | None = None,
    ):
        super().__init__(circuit)
        if gradient not in ("parameter_shift", "spsa"):
            raise QuantumError(f"gradient {gradient!r}: use 'parameter_shift' or 'spsa'")
        if spsa_samples < 1 or spsa_step <= 0:
            raise QuantumError("spsa_samples must be >= 1 and spsa_step > 0")
        check_shift_rule(run_circuit)
        if isinstance(run_circuit.global_phase, ParameterExpression):
            run_circuit = run_circuit.copy()  # a global phase changes no expectation value
            run_circuit.global_phase = 0.0
        self.gradient: GradientMethod = gradient
        self.spsa_samples = spsa_samples
        self.spsa_step = spsa_step
        self.calls = 0
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.run_circuit = run_circuit
        self.observables = tuple(observables)
        self.mitigation = mitigation or MitigationConfig()
        self.cache = CompileCache() if cache is None else cache
        self.measured_qubits = tuple(sorted(set().union(*map(pauli_support, self.observables))))
        physical = tuple(range(circuit.num_qubits)) if physical_qubits is None else physical_qubits
        symmetry = None
        if self.mitigation.symmetry:
            symmetry = parity_operator(run_circuit.num_qubits, physical)
            lightcone = False  # the parity's light cone is the whole circuit
        columns = value_columns(circuit)
        self._plans = plan_groups(
            run_circuit, self.observables, columns, lightcone=lightcone, noisy=noisy
        )
        self._counts = Overhead()
        self._mitigated: dict[int, Mitigated] = {}
        self._calibration: tuple[Group, Group] | None = None
        self._calibrated: dict[int, OutputMap] | None = None  # after readout calibration
        self.readout_calibration: tuple[np.ndarray, np.ndarray] | None = None  # (a, b) per qubit
        if self.mitigation.enabled:
            self._plan_mitigation(symmetry, target, basis_gates)
        self._settings = {
            g.index: measurement_settings(_labels(g.observables)) for g in self.all_groups
        }

    def _plan_mitigation(
        self,
        symmetry: SparsePauliOp | None,
        target: Target | None,
        basis_gates: Sequence[str] | None,
    ) -> None:
        """Folded circuits per scale factor, strings to measure, calibration circuits."""
        m = self.mitigation
        counter = count(len(self.groups))
        scales = m.scale_factors if m.zne else (1.0,)
        sector = 1 if m.parity == "even" else -1
        device = f"fold:{m.folding}:{target is not None}:{tuple(basis_gates or ())}"
        for group in self.groups:
            output = output_map(
                group.observables, symmetry=symmetry, sector=sector, readout=m.readout
            )
            circuits, reached = [], []
            for scale in scales:
                folded = self.cache.get(
                    group.circuit,
                    f"{device}:{scale}",
                    lambda g=group, s=scale: _folded(g.circuit, s, m.folding, target, basis_gates),
                )
                circuits.append(folded[0])
                reached.append(folded[1])
            check_scales(reached)
            physical = []
            for folded, scale in zip(circuits, reached, strict=True):
                if list(folded.parameters) != list(group.circuit.parameters):
                    raise QuantumError("folding changed the circuit's parameters")
                physical.append(
                    Group(
                        group.outputs,
                        folded,
                        group.columns,
                        output.observables,
                        group.cost * scale,
                        next(counter),
                    )
                )
            bounds = observable_bounds(group.observables)
            self._mitigated[group.index] = Mitigated(
                tuple(physical), tuple(reached), output, bounds
            )
        if m.readout:
            labels = {label for mg in self._mitigated.values() for label in mg.output.labels}
            measured = sorted(set().union(*(pauli_support(SparsePauliOp(lb)) for lb in labels)))
            n = self.run_circuit.num_qubits
            z = tuple(SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], n) for q in measured)
            none = np.zeros(0, dtype=int)
            self._calibration = tuple(  # type: ignore[assignment]
                Group(
                    np.arange(len(measured)),
                    _translated(calibration_circuit(n, measured, state), target, basis_gates),
                    none,
                    z,
                    1.0,
                    next(counter),
                )
                for state in (0, 1)
            )

    @property
    def groups(self) -> tuple[Group, ...]:
        """Every group of every plan, in `Group.index` order."""
        return tuple(g for plan in self._plans for g in plan)

    @property
    def all_groups(self) -> tuple[Group, ...]:
        """The plans' groups, then the circuits mitigation adds, in `Group.index` order."""
        extra = tuple(g for mg in self._mitigated.values() for g in mg.groups)
        return self.groups + extra + (self._calibration or ())

    def reseed(self, seed: int) -> None:
        """Restart the shot noise (SPSA directions, readout calibration) from `seed`."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._calibrated = None
        self.readout_calibration = None

    def overhead(self) -> Overhead:
        return self._counts

    @abstractmethod
    def _evaluate(
        self, batches: list[tuple[Group, np.ndarray]], shots: int | None, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """ONE backend call: per group, values (rows, n_g) -> estimates (rows, O_g).

        `shots` per circuit (None: exact expectation values, where the backend has
        them); `rng` draws the shot noise.
        """

    def _count(self, batches: list[tuple[Group, np.ndarray]], shots: int | None) -> Overhead:
        circuits = sum(len(rows) * self._settings[g.index] for g, rows in batches)
        return Overhead(circuits, circuits * (shots or 0))

    def _run(self, batches: list[tuple[Group, np.ndarray]]) -> list[np.ndarray]:
        """Estimates of the plan's groups (rows, O_g), mitigated as configured."""
        base = self._count(batches, self.shots)
        self._counts += Overhead(0, 0, base.circuits, base.shots)
        if not self.mitigation.enabled:
            self._counts += base
            return self._evaluate(batches, self.shots, self.rng)
        outputs = self._calibrate()
        physical = [(p, rows) for g, rows in batches for p in self._mitigated[g.index].groups]
        raw = iter(self._evaluate(physical, self.shots, self.rng))
        self._counts += self._count(physical, self.shots)
        m = self.mitigation
        out = []
        for group, _ in batches:
            mitigated = self._mitigated[group.index]
            output = outputs.get(group.index, mitigated.output)
            values = np.stack([output.apply(next(raw)) for _ in mitigated.groups])  # (m, rows, O)
            if m.zne:
                estimate = extrapolate(values, mitigated.scales, m.extrapolation, m.asymptote)
            else:
                estimate = values[0]
            out.append(np.clip(estimate, -mitigated.bounds, mitigated.bounds))
        return out

    def _calibrate(self) -> dict[int, OutputMap]:
        """Output maps with the readout inverse ({} without readout mitigation).

        Calibrated once per seed (construction, `reseed`) from a stream of its own,
        so the result does not depend on how many calls came before.
        """
        if self._calibration is None:
            return {}
        if self._calibrated is None:
            shots = self.mitigation.calibration_shots
            rng = np.random.default_rng([self.seed, CALIBRATION_STREAM])
            none = np.zeros((1, 0))
            batches = [(g, none) for g in self._calibration]
            z0, z1 = self._evaluate(batches, shots, rng)
            self._counts += self._count(batches, shots)
            measured = self._calibration[0].observables
            a, b = np.ones(self.run_circuit.num_qubits), np.zeros(self.run_circuit.num_qubits)
            qubits = [next(iter(pauli_support(op))) for op in measured]
            a[qubits], b[qubits] = readout_from_calibration(z0[0], z1[0])
            self.readout_calibration = (a, b)
            self._calibrated = {
                index: calibrate(mg.output, a, b) for index, mg in self._mitigated.items()
            }
        return self._calibrated

    def expectations(self, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        values = values_matrix(self.circuit, inputs, weights)  # (B, S + P)
        plan = cheapest(self._plans, lambda n: 1)
        results = self._run([(g, values[:, g.columns]) for g in plan])
        out = np.zeros((len(values), self.circuit.num_outputs))  # (B, O)
        for group, result in zip(plan, results, strict=True):
            out[:, group.outputs] = result
        return out

    def jacobians(
        self, inputs: np.ndarray, weights: np.ndarray, inputs_grad: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray]:
        values = values_matrix(self.circuit, inputs, weights)  # (B, S + P)
        batch, n_values = values.shape
        n_slots = len(self.circuit.slots)
        k = self.spsa_samples
        spsa = self.gradient == "spsa"
        plan = cheapest(self._plans, (lambda n: 1 + 2 * k) if spsa else (lambda n: 1 + 2 * n))
        batches, directions, shifted = [], [], []
        for group in plan:
            group_values = values[:, group.columns]  # (B, n_g)
            # positions (within the group) of the parameters whose gradient is wanted
            wanted = np.flatnonzero(inputs_grad | (np.asarray(group.columns) >= n_slots))
            shifted.append(wanted)
            if spsa:
                rows, d = spsa_values(group_values, k, self.spsa_step, self.rng)
                directions.append(d)  # (B, k, n_g)
            else:
                rows = shifted_values(group_values, columns=wanted)  # (B*(1+2 k_g), n_g)
            batches.append((group, rows))
        results = self._run(batches)
        grads = np.zeros((batch, self.circuit.num_outputs, n_values))  # (B, O, S + P)
        for i, (group, result) in enumerate(zip(plan, results, strict=True)):
            columns = np.asarray(group.columns)
            if spsa:
                _, group_grads = spsa_assemble(result, directions[i], self.spsa_step)
            else:
                _, group_grads = assemble(result, batch, len(shifted[i]))  # (B, O_g, k_g)
                columns = columns[shifted[i]]
            grads[np.ix_(np.arange(batch), group.outputs, columns)] = group_grads
        d_inputs = self.circuit.fold_slot_grads(grads[..., :n_slots]) if inputs_grad else None
        return d_inputs, grads[..., n_slots:]  # (B, O, F) or None, (B, O, P)


def resolve_noise(
    noise: NoiseConfig | NoiseModel | None, seed: int
) -> tuple[NoiseModel | None, BackendV2 | None]:
    """The noise model, and the device backend to transpile to (device snapshots only)."""
    if noise is None or isinstance(noise, NoiseModel):
        return noise, None
    if noise.kind == "device":
        assert noise.device is not None  # checked by NoiseConfig
        backend = device_backend(noise.device, seed)
        return device_noise_model(backend), backend
    return build_noise_model(noise, seed), None


def readout_channels(
    noise_model: NoiseModel | None, num_qubits: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per qubit (a, b), (n_qubits,) each: a +-1 outcome m is read with mean a * m + b.

    a = 1 - P(1|0) - P(0|1) and b = P(0|1) - P(1|0), from the model's readout errors.
    """
    a, b = np.ones(num_qubits), np.zeros(num_qubits)
    if noise_model is None:
        return a, b
    for error in noise_model.to_dict()["errors"]:
        if error["type"] != "roerror":
            continue
        probs = np.asarray(error["probabilities"], dtype=float)  # [[P(0|0), P(1|0)], [P(0|1), ..]]
        if probs.shape != (2, 2):
            raise QuantumError("correlated (multi-qubit) readout errors are not supported")
        qubits = error.get("gate_qubits")
        targets = range(num_qubits) if qubits is None else [q[0] for q in qubits]
        for q in targets:
            if q < num_qubits:
                a[q] = 1.0 - probs[0, 1] - probs[1, 0]
                b[q] = probs[1, 0] - probs[0, 1]
    return a, b


def readout_expansion(label: str, a: np.ndarray, b: np.ndarray) -> list[tuple[str, float]]:
    """The measured mean of Pauli `label` as sum_j w_j <P_j> over its sub-strings P_j.

    Measuring P means reading one +-1 outcome per qubit of its support Q; with
    independent readout errors the product has mean
    sum_{S in Q} prod_{q in S} a_q prod_{q in Q - S} b_q <P restricted to S>.
    Symmetric errors (b = 0) leave only S = Q: <P> scaled by prod a_q.
    """
    n = len(label)
    support = [q for q in range(n) if label[n - 1 - q] != "I"]
    terms = []
    for kept in product((True, False), repeat=len(support)):
        weight = float(np.prod([a[q] if k else b[q] for q, k in zip(support, kept, strict=True)]))
        if weight == 0.0:
            continue
        chars = list(label)
        for q, k in zip(support, kept, strict=True):
            if not k:
                chars[n - 1 - q] = "I"
        terms.append(("".join(chars), weight))
    return terms


def shots_from(shots: int | None, precision: float | None) -> int | None:
    """Shots per Pauli term (None: exact expectation values); precision = 1 / sqrt(shots)."""
    if shots is not None and precision is not None:
        raise QuantumError("give shots or precision, not both")
    if shots is not None:
        if shots < 1:
            raise QuantumError(f"shots must be >= 1, got {shots}")
        return int(shots)
    precision = DEFAULT_PRECISION if precision is None else precision
    if precision < 0:
        raise QuantumError(f"precision must be >= 0, got {precision}")
    return None if precision == 0 else max(1, round(precision**-2))


def sample_shots(exact: np.ndarray, shots: int | None, rng: np.random.Generator) -> np.ndarray:
    """Estimates of +-1-valued observables with expectations `exact`, each from `shots` shots."""
    if shots is None:
        return exact
    p_plus = np.clip((1.0 + exact) / 2.0, 0.0, 1.0)
    return 2.0 * rng.binomial(shots, p_plus) / shots - 1.0


@dataclass(frozen=True)
class _Terms:
    """How the observables of a group are estimated from exact Pauli expectations.

    exact (rows, T) @ readout.T -> means of the M measured Pauli strings (rows, M),
    then shot noise, then @ coeffs -> (rows, O_g).
    """

    paulis: tuple[SparsePauliOp, ...]  # T strings whose exact expectations Aer computes
    readout: np.ndarray  # (M, T): measured mean of string m = sum_t readout[m, t] <paulis[t]>
    coeffs: np.ndarray  # (M, O_g) real coefficients of the measured strings


def split_terms(observables: Sequence[SparsePauliOp], a: np.ndarray, b: np.ndarray) -> _Terms:
    """Measured Pauli strings of `observables`, their coefficients and readout expansion."""
    measured: dict[str, int] = {}
    entries: list[tuple[int, int, float]] = []
    for k, op in enumerate(observables):
        if np.abs(op.coeffs.imag).max(initial=0.0) > 1e-12:
            raise QuantumError(f"observable {op} is not Hermitian (complex coefficient)")
        for label, coeff in op.simplify().to_list():
            entries.append((measured.setdefault(label, len(measured)), k, float(np.real(coeff))))
    coeffs = np.zeros((len(measured), len(observables)))
    for m, k, c in entries:
        coeffs[m, k] += c
    exact: dict[str, int] = {}
    weights: list[tuple[int, int, float]] = []
    for label, m in measured.items():
        for sub_label, weight in readout_expansion(label, a, b):
            weights.append((m, exact.setdefault(sub_label, len(exact)), weight))
    readout = np.zeros((len(measured), len(exact)))
    for m, t, weight in weights:
        readout[m, t] += weight
    return _Terms(tuple(SparsePauliOp(label) for label in exact), readout, coeffs)


class AerExecutor(ShotExecutor):
    """Aer's EstimatorV2, optionally noisy, with shot noise; gradients by parameter shift or SPSA.

    precision (default 1/32) or shots (precision = 1/sqrt(shots)) set the shots per
    Pauli term; precision=0 gives exact (noisy) expectation values. noise is a
    NoiseConfig, a ready NoiseModel (its gates must match the circuit's), or None.
    A device snapshot (NoiseConfig kind='device') compiles the circuit to that
    device once, here (Algorithm 1, `compilation` sets D_max); without one,
    `compilation.coupling` routes it onto a coupling map. `mitigation` adds ZNE,
    readout-error mitigation and parity post-selection (quantum/mitigation.py).
    """

    def __init__(
        self,
        circuit: VariationalCircuit,
        *,
        precision: float | None = None,
        shots: int | None = None,
        noise: NoiseConfig | NoiseModel | None = None,
        seed: int = 0,
        gradient: GradientMethod = "parameter_shift",
        spsa_samples: int = 16,
        spsa_step: float = 0.1,
        lightcone: bool = True,
        backend_options: dict | None = None,
        mitigation: MitigationConfig | None = None,
        compilation: CompileConfig | None = None,
        cache: CompileCache | None = None,
    ):
        from qiskit_aer.primitives import EstimatorV2

        self.shots = shots_from(shots, precision)
        noise_model, device = resolve_noise(noise, seed)
        compilation = compilation or CompileConfig()
        if device is not None and compilation.coupling is not None:
            raise QuantumError(
                "a device snapshot has its own coupling map: drop compilation.coupling"
            )
        cache = CompileCache() if cache is None else cache
        self.compiled: CompiledCircuit | None = None
        physical = None
        if device is not None or compilation.coupling is not None:
            self.compiled, observables = compile_for(
                circuit, compilation, seed=seed, cache=cache, device=device
            )
            run_circuit, physical = self.compiled.circuit, self.compiled.physical_qubits
        else:
            run_circuit, observables = circuit.circuit, circuit.observables
        super().__init__(
            circuit,
            run_circuit=run_circuit,
            observables=observables,
            seed=seed,
            gradient=gradient,
            spsa_samples=spsa_samples,
            spsa_step=spsa_step,
            lightcone=lightcone,
            noisy=noise_model is not None,
            mitigation=mitigation,
            physical_qubits=physical,
            target=None if device is None else device.target,
            basis_gates=compilation.basis_gates if self.compiled is not None else None,
            cache=cache,
        )
        self.noise_model, self.device = noise_model, device
        self.target = None if device is None else device.target
        options = {"max_parallel_experiments": 0} | (backend_options or {})
        if self.noise_model is not None:
            options["noise_model"] = self.noise_model
        self.estimator = EstimatorV2(options={"backend_options": options, "run_options": {}})
        a, b = readout_channels(self.noise_model, run_circuit.num_qubits)
        self._terms = {g.index: split_terms(g.observables, a, b) for g in self.all_groups}

    def _evaluate(
        self, batches: list[tuple[Group, np.ndarray]], shots: int | None, rng: np.random.Generator
    ) -> list[np.ndarray]:
        pubs = []
        for group, rows in batches:
            paulis = list(self._terms[group.index].paulis)
            if group.columns.size:
                pubs.append((group.circuit, paulis, rows[:, None, :]))  # -> (rows, T)
            else:  # nothing to bind (Aer rejects empty bindings): one evaluation, shared
                pubs.append((group.circuit, paulis))  # -> (T,)
        # Aer's own randomness (noise trajectories on large circuits), seeded per call
        self.estimator.options.run_options["seed_simulator"] = int(rng.integers(2**31))
        results = self.estimator.run(pubs, precision=0.0).result()
        self.calls += 1
        out = []
        for (group, rows), result in zip(batches, results, strict=True):
            terms = self._terms[group.index]
            evs = np.asarray(result.data.evs, dtype=float)
            exact = np.broadcast_to(evs.reshape(-1, evs.shape[-1]), (len(rows), evs.shape[-1]))
            # exact: (rows, T) -> measured means (rows, M) -> shot estimates
            estimates = sample_shots(exact @ terms.readout.T, shots, rng)
            out.append(estimates @ terms.coeffs)  # (rows, O_g)
        return out
