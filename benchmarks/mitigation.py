"""M1: error mitigation on a noisy ansatz: mitigated error over unmitigated error.

The circuit: 6 qubits, 2 layers of RY + ring CNOTs (build_circuit), outputs
<Z_i> on every qubit; depolarizing noise on two-qubit gates p2 = 0.02 and a
symmetric readout flip of 0.02 (quantum/noise.py). 20 parameter sets (inputs
and weights uniform in [-pi, pi), seeded) give 20 x 6 expectation values.

* exact: the noiseless statevector values.
* unmitigated: `AerExecutor` with the noise.
* mitigated: the same executor with `MitigationConfig(techniques=(zne, readout))`:
  global unitary folding at scale factors 1, 3, 5, Richardson extrapolation,
  tensored readout-error mitigation from 2 calibration circuits.

Figure: mean |mitigated - exact| / mean |unmitigated - exact| (target <= 0.5).
By default both run with exact (noisy) expectation values (--shots 0), so the
figure measures the bias mitigation removes; with --shots N every circuit is
estimated from N shots, and the shot noise that extrapolation amplifies
enters both errors. Information lines show the other techniques, and the
figure at a few shot counts, with the executor's overhead (circuits, shots).

    python benchmarks/mitigation.py [--shots 0] [--sets 20] [--seed 0] [--quick]

The last line is `M1 <ratio>`.
"""

from __future__ import annotations

import argparse

import numpy as np
from qiskit.quantum_info import Statevector

from quantum.circuits import VariationalCircuit, build_circuit
from quantum.config import CircuitConfig, MitigationConfig, NoiseConfig
from quantum.executors.aer import AerExecutor

QUBITS, LAYERS = 6, 2
NOISE = NoiseConfig(kind="parametric", p2=0.02, readout=0.02)
MITIGATION = MitigationConfig(techniques=("zne", "readout"), scale_factors=(1.0, 3.0, 5.0))
CALIBRATION_SHOTS = 100_000


def exact_values(vc: VariationalCircuit, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B, O) noiseless expectation values, one statevector per parameter set."""
    out = np.empty((len(x), vc.num_outputs))
    for b, row in enumerate(x):
        bound = dict(zip(vc.slots, vc.slot_values(row[None])[0], strict=True))
        bound |= dict(zip(vc.weights, w[b], strict=True))
        state = Statevector(vc.circuit.assign_parameters(bound))
        out[b] = [state.expectation_value(op).real for op in vc.observables]
    return out


def noisy_values(
    vc: VariationalCircuit,
    x: np.ndarray,
    w: np.ndarray,
    shots: int,
    mitigation: MitigationConfig | None,
    seed: int,
) -> tuple[np.ndarray, AerExecutor]:
    """(B, O) values from the noisy executor, one parameter set (weights) per row."""
    kwargs = {"precision": 0.0} if shots == 0 else {"shots": shots}
    executor = AerExecutor(vc, noise=NOISE, seed=seed, mitigation=mitigation, **kwargs)
    out = np.stack([executor.expectations(x[b : b + 1], w[b])[0] for b in range(len(x))])
    return out, executor


def ratio(
    vc: VariationalCircuit,
    x: np.ndarray,
    w: np.ndarray,
    exact: np.ndarray,
    shots: int,
    mitigation: MitigationConfig,
    seed: int,
) -> tuple[float, float, float, AerExecutor]:
    """(mitigated MAE / unmitigated MAE, unmitigated MAE, mitigated MAE, mitigated executor)."""
    plain, _ = noisy_values(vc, x, w, shots, None, seed)
    mitigated, executor = noisy_values(vc, x, w, shots, mitigation, seed)
    before = float(np.abs(plain - exact).mean())
    after = float(np.abs(mitigated - exact).mean())
    return after / before, before, after, executor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=0, help="0: exact expectation values")
    parser.add_argument("--sets", type=int, default=20, help="random parameter sets")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="skip the information lines")
    args = parser.parse_args()

    vc = build_circuit(CircuitConfig(qubits=QUBITS, layers=LAYERS, entanglement="ring"))
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(-np.pi, np.pi, (args.sets, vc.num_features))
    w = rng.uniform(-np.pi, np.pi, (args.sets, vc.num_weights))
    exact = exact_values(vc, x, w)
    print(
        f"{QUBITS} qubits, {LAYERS} ring layers, p2={NOISE.p2}, readout={NOISE.readout}, "
        f"{args.sets} parameter sets, mean |exact| = {np.abs(exact).mean():.4f}"
    )
    mitigation = MITIGATION.model_copy(update={"calibration_shots": CALIBRATION_SHOTS})
    if not args.quick:
        variants = {
            "readout only": MitigationConfig(
                techniques=("readout",), calibration_shots=CALIBRATION_SHOTS
            ),
            "zne 1,3 linear": MitigationConfig(techniques=("zne",), scale_factors=(1.0, 3.0)),
            "zne 1,3,5 richardson": MitigationConfig(techniques=("zne",)),
            "zne 1,3,5 exponential": MitigationConfig(
                techniques=("zne",), extrapolation="exponential"
            ),
            "zne local folding": MitigationConfig(techniques=("zne",), folding="local"),
        }
        for name, config in variants.items():
            r, before, after, _ = ratio(vc, x, w, exact, args.shots, config, args.seed)
            print(f"{name:>24}: MAE {before:.4f} -> {after:.4f}  ratio {r:.3f}")
        for shots in (8192, 100_000):
            r, before, after, executor = ratio(vc, x, w, exact, shots, mitigation, args.seed)
            over = executor.overhead()
            print(
                f"{'zne+readout, ' + str(shots) + ' shots':>24}: MAE {before:.4f} -> {after:.4f}"
                f"  ratio {r:.3f}  (circuits {over.base_circuits} -> {over.circuits},"
                f" shots {over.base_shots} -> {over.shots})"
            )
    r, before, after, executor = ratio(vc, x, w, exact, args.shots, mitigation, args.seed)
    label = "exact expectations" if args.shots == 0 else f"{args.shots} shots"
    print(f"zne 1,3,5 richardson + readout ({label}): MAE {before:.4f} -> {after:.4f}")
    print(f"overhead: {executor.overhead().as_dict()}")
    print(f"M1 {r:.3f}")


if __name__ == "__main__":
    main()
