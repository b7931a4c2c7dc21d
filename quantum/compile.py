"""Algorithm 1 (paper §5.1.1): compile a circuit for a device under a depth limit.

    C_mapped <- QubitMapping(C, G)           layout + routing onto the coupling map G
    C_opt    <- GateOptimization(C_mapped)   qiskit's preset optimisation at `optimization_level`
    while Depth(C_opt) > D_max:
        C_opt <- LayerMerging(C_opt)         a higher optimisation level, then more routing trials
        if no improvement possible: break

Every step is a qiskit preset pass manager (`generate_preset_pass_manager`):
mapping and routing are its layout and routing stages, gate optimisation and
layer merging its optimisation stage (1: adjacent-gate cancellation and 1q
merging; 2: commutation-aware cancellation; 3: block consolidation and
resynthesis). This module adds only the depth loop and the report: depth and
two-qubit gate count of the logical circuit, of the unoptimised routed circuit
(optimisation level 0) and of the result, the swaps routing inserted, and
whether D_max was met. A limit that cannot be met is reported, not raised.

The target is a device (`Target`, e.g. a fake IBM backend's or GenericBackendV2's)
or a coupling map with basis gates (`CompileConfig.coupling`: line, ring, full,
heavy_hex, or explicit edges). `CompileCache` keeps compiled circuits per
(circuit, device, settings); each executor owns one, so a training step never
re-transpiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from qiskit import QuantumCircuit
from qiskit.quantum_info import SparsePauliOp
from qiskit.transpiler import CouplingMap, PassManager, Target, generate_preset_pass_manager

from qfl.errors import QuantumError
from quantum.config import DEFAULT_BASIS, MAX_LEVEL, CompileConfig, CouplingName

T = TypeVar("T")


@dataclass(frozen=True)
class CompileReport:
    """What Algorithm 1 did to one circuit."""

    depth_before: int  # logical circuit
    two_qubit_before: int
    depth_routed: int  # mapped and routed, unoptimised (optimisation level 0)
    two_qubit_routed: int
    depth_after: int  # the result
    two_qubit_after: int
    swaps: int  # swaps routing inserted into the result
    depth_limit: int | None
    met: bool  # depth_after <= depth_limit (True without a limit)
    optimization_level: int  # the level that produced the result
    attempts: int  # compilations tried, the routed one included

    def as_dict(self) -> dict[str, int | bool | None]:
        return asdict(self)


@dataclass(frozen=True)
class CompiledCircuit:
    """A physical circuit, the layout that maps logical qubits onto it, and the report."""

    circuit: QuantumCircuit
    report: CompileReport

    def apply_layout(self, op: SparsePauliOp) -> SparsePauliOp:
        """A logical observable moved onto the physical qubits that hold its qubits at the end."""
        return op.apply_layout(self.circuit.layout)

    @property
    def physical_qubits(self) -> tuple[int, ...]:
        """Physical qubit of each logical qubit at the end of the circuit."""
        layout = self.circuit.layout
        if layout is None:
            return tuple(range(self.circuit.num_qubits))
        return tuple(layout.final_index_layout())


def coupling_map(coupling: CouplingName | Sequence[Sequence[int]], num_qubits: int) -> CouplingMap:
    """A bidirectional coupling map: a named pattern on `num_qubits` qubits, or explicit edges.

    heavy_hex is the connected `num_qubits`-qubit fragment of the smallest heavy-hex
    lattice that holds it (qiskit's `CouplingMap.from_heavy_hex`, odd distance d,
    (5 d^2 - 2 d - 1) / 2 qubits): its qubits in breadth-first order from qubit 0,
    renumbered 0..n-1 in that order (the convention of quantum/resources.py).
    """
    if isinstance(coupling, str):
        if coupling == "line":
            edges = CouplingMap.from_line(num_qubits, bidirectional=False).get_edges()
        elif coupling == "ring":
            edges = CouplingMap.from_ring(num_qubits, bidirectional=False).get_edges()
        elif coupling == "full":
            edges = CouplingMap.from_full(num_qubits, bidirectional=False).get_edges()
        elif coupling == "heavy_hex":
            edges = heavy_hex_edges(num_qubits)
        else:
            raise QuantumError(f"unknown coupling {coupling!r} (line, ring, full, heavy_hex)")
    else:
        edges = [(int(a), int(b)) for a, b in coupling]
    pairs = {(a, b) for a, b in edges} | {(b, a) for a, b in edges}
    return CouplingMap(sorted(pairs))


def heavy_hex_edges(num_qubits: int) -> list[tuple[int, int]]:
    """Edges of the breadth-first `num_qubits`-qubit fragment of a heavy-hex lattice."""
    d = 3
    while (5 * d * d - 2 * d - 1) // 2 < num_qubits:
        d += 2
    lattice = CouplingMap.from_heavy_hex(d, bidirectional=False)
    neighbours: dict[int, set[int]] = {}
    for a, b in lattice.get_edges():
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    order, seen = [0], {0}
    for node in order:  # breadth-first; `order` grows while it is walked
        for nb in sorted(neighbours[node]):
            if nb not in seen and len(order) < num_qubits:
                seen.add(nb)
                order.append(nb)
    index = {q: i for i, q in enumerate(order)}
    return sorted(
        {
            (min(index[a], index[b]), max(index[a], index[b]))
            for a, b in lattice.get_edges()
            if a in index and b in index
        }
    )


def two_qubit_count(circuit: QuantumCircuit) -> int:
    """Gates that act on two (or more) qubits."""
    return sum(
        1 for inst in circuit.data if len(inst.qubits) >= 2 and inst.operation.name != "barrier"
    )


def _transpile(
    circuit: QuantumCircuit,
    level: int,
    seed: int,
    target: Target | None,
    coupling: CouplingMap | None,
    basis_gates: Sequence[str] | None,
) -> tuple[QuantumCircuit, int]:
    """One preset compilation and the swaps its routing inserted."""
    if target is not None:
        manager = generate_preset_pass_manager(
            optimization_level=level, target=target, seed_transpiler=seed
        )
    else:
        manager = generate_preset_pass_manager(
            optimization_level=level,
            coupling_map=coupling,
            basis_gates=list(basis_gates or DEFAULT_BASIS),
            seed_transpiler=seed,
        )
    most = 0  # swaps are decomposed by translation: the most seen after any pass

    def count_swaps(dag: Any = None, **_: Any) -> None:
        nonlocal most
        most = max(most, dag.count_ops().get("swap", 0))

    out = manager.run(circuit, callback=count_swaps)
    return out, max(0, most - circuit.count_ops().get("swap", 0))


def compile_nisq(
    circuit: QuantumCircuit,
    *,
    target: Target | None = None,
    coupling: CouplingMap | None = None,
    basis_gates: Sequence[str] | None = None,
    depth_limit: int | None = None,
    optimization_level: int = 1,
    seed: int = 0,
    extra_trials: int = 4,
    accept: Callable[[QuantumCircuit], bool] | None = None,
) -> CompiledCircuit:
    """Algorithm 1: map, route and optimise; raise the optimisation while depth > D_max.

    Give a device `target`, or a `coupling` map and `basis_gates`. Candidates
    `accept` rejects (e.g. circuits that break the parameter-shift rule) are
    skipped. Without a limit the result is the one compilation at
    `optimization_level`; with one, the shallowest accepted candidate (the routed
    unoptimised circuit included) once the limit is met or every level and
    `extra_trials` further routing seeds at level 3 were tried.
    """
    if target is None and coupling is None:
        raise QuantumError("compile_nisq needs a device target or a coupling map")
    if not 0 <= optimization_level <= MAX_LEVEL:
        raise QuantumError(f"optimization_level must be 0..3, got {optimization_level}")
    accept = accept or (lambda _: True)

    def run(level: int, trial_seed: int) -> tuple[QuantumCircuit, int, int]:
        out, swaps = _transpile(circuit, level, trial_seed, target, coupling, basis_gates)
        return out, swaps, level

    routed = run(0, seed)
    attempts = 1
    schedule = [(level, seed) for level in range(optimization_level, MAX_LEVEL + 1)]
    schedule += [(MAX_LEVEL, seed + trial) for trial in range(1, extra_trials + 1)]
    if depth_limit is None:
        schedule = schedule[:1]
    best: tuple[QuantumCircuit, int, int] | None = None

    def consider(candidate: tuple[QuantumCircuit, int, int]) -> None:
        nonlocal best
        if accept(candidate[0]) and (best is None or candidate[0].depth() < best[0].depth()):
            best = candidate

    def met() -> bool:
        return best is not None and (depth_limit is None or best[0].depth() <= depth_limit)

    for level, trial_seed in schedule:
        if level == 0:
            candidate = routed
        else:
            candidate = run(level, trial_seed)
            attempts += 1
        consider(candidate)
        if met():
            break
    if not met():
        consider(routed)  # the last resort: mapping and routing without optimisation
    out, swaps, level = best
    report = CompileReport(
        depth_before=circuit.depth(),
        two_qubit_before=two_qubit_count(circuit),
        depth_routed=routed[0].depth(),
        two_qubit_routed=two_qubit_count(routed[0]),
        depth_after=out.depth(),
        two_qubit_after=two_qubit_count(out),
        swaps=swaps,
        depth_limit=depth_limit,
        met=depth_limit is None or out.depth() <= depth_limit,
        optimization_level=level,
        attempts=attempts,
    )
    return CompiledCircuit(out, report)


def compile_with(
    circuit: QuantumCircuit,
    config: CompileConfig,
    *,
    seed: int = 0,
    target: Target | None = None,
    accept: Callable[[QuantumCircuit], bool] | None = None,
) -> CompiledCircuit:
    """`compile_nisq` onto a device `target`, or onto `config.coupling` when there is none."""
    coupling = None
    if target is None:
        if config.coupling is None:
            raise QuantumError("nothing to compile to: give a device or compilation.coupling")
        coupling = coupling_map(config.coupling, config.coupling_qubits or circuit.num_qubits)
        if coupling.size() < circuit.num_qubits:
            raise QuantumError(
                f"coupling map of {coupling.size()} qubits cannot hold {circuit.num_qubits}"
            )
    return compile_nisq(
        circuit,
        target=target,
        coupling=coupling,
        basis_gates=config.basis_gates,
        depth_limit=config.depth_limit,
        optimization_level=config.optimization_level,
        seed=seed,
        extra_trials=config.extra_trials,
        accept=accept,
    )


def translate(
    circuit: QuantumCircuit,
    *,
    target: Target | None = None,
    basis_gates: Sequence[str] | None = None,
) -> QuantumCircuit:
    """Gates outside the basis rewritten into it: no layout, routing or optimisation.

    Folding adds inverse gates (sx -> sxdg) that a device may not have; this puts
    them back in its basis without cancelling the folds.
    """
    from qiskit.circuit.equivalence_library import SessionEquivalenceLibrary
    from qiskit.transpiler.passes import BasisTranslator

    if target is None and basis_gates is None:
        return circuit
    basis = list(target.operation_names) if target is not None else list(basis_gates or ())
    if all(
        inst.operation.name in basis or inst.operation.name == "barrier" for inst in circuit.data
    ):
        return circuit
    translator = BasisTranslator(SessionEquivalenceLibrary, basis, target)
    return PassManager([translator]).run(circuit)


def fingerprint(circuit: QuantumCircuit) -> str:
    """SHA-256 over a circuit's structure: gates, qubits and parameter expressions."""
    digest = hashlib.sha256(f"{circuit.num_qubits}|{circuit.global_phase}".encode())
    for inst in circuit.data:
        qubits = ",".join(str(circuit.find_bit(q).index) for q in inst.qubits)
        params = ",".join(str(p) for p in inst.operation.params)
        digest.update(f"|{inst.operation.name}({params})@{qubits}".encode())
    return digest.hexdigest()


class CompileCache:
    """Compiled (and folded) circuits per (circuit, device and settings), built once each.

    An executor owns one (a quantum layer shares its own among the executors of
    its truncated circuits); `builds` counts the compilations that actually ran.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Any] = {}
        self.builds = 0

    def get(self, circuit: QuantumCircuit, device: str, build: Callable[[], T]) -> T:
        """The cached result for (circuit, device), from `build()` the first time."""
        key = (fingerprint(circuit), device)
        if key not in self._entries:
            self._entries[key] = build()
            self.builds += 1
        return self._entries[key]

    @property
    def size(self) -> int:
        """Entries held."""
        return len(self._entries)
