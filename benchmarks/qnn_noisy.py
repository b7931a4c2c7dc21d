"""Q2: a noisy QNN's forward + backward, qiskit-machine-learning's way against AerExecutor.

The circuit: 8 qubits, 3 layers, linear CNOTs, one output <Z> on qubit 0;
depolarizing noise p1 = 0.001, p2 = 0.01; precision 1/32 (1024 shots); batch 32.

* reference: `EstimatorQNN` on Aer's `EstimatorV2` with the noise model and
  `ParamShiftEstimatorGradient` (quantum/executors/reference.py), forward then
  backward with respect to the weights only (input gradients switched off,
  its cheapest setting); it sends one pub per shifted circuit.
* aer: `AerExecutor.expectations` then `AerExecutor.jacobians` (inputs AND
  weights), same noise model: one Aer call each, all shifts of the batch in one
  pub per group, gates outside the observable's light cone dropped.
* aer-full (information): the same without light cones (`lightcone=False`),
  i.e. what batching alone buys.

Repeats alternate between the three so that they see the same machine state.
(Aer's EstimatorV2 draws its Gaussian precision noise from a generator re-seeded
identically for every pub, so the reference's + and - shifted pubs share one
draw and its gradients come out almost noise-free; AerExecutor's carry
binomial shot noise. The gap line shows both compute the same gradient.)

    python benchmarks/qnn_noisy.py [--batch 32] [--repeats 3] [--skip-full]

The last line is `Q2 <ratio>` (median reference time / median aer time; target >= 20).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from quantum.circuits import build_circuit
from quantum.config import CircuitConfig, NoiseConfig
from quantum.executors.aer import AerExecutor
from quantum.executors.reference import ReferenceExecutor
from quantum.noise import build_noise_model

QUBITS, LAYERS = 8, 3
NOISE = NoiseConfig(kind="parametric", p1=0.001, p2=0.01)
PRECISION = 1 / 32


def timed(step: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = step()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true", help="do not time aer-full")
    args = parser.parse_args()

    z0 = "I" * (QUBITS - 1) + "Z"
    circuit = build_circuit(
        CircuitConfig(qubits=QUBITS, layers=LAYERS, entanglement="linear", observables=(z0,))
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(-np.pi, np.pi, (args.batch, QUBITS))  # (B, F)
    w = rng.uniform(-np.pi, np.pi, circuit.num_weights)  # (P,)
    model = build_noise_model(NOISE)

    reference = ReferenceExecutor(circuit, noise=model, precision=PRECISION, seed=0)
    reference.qnn.input_gradients = False  # weights only: the reference's cheapest backward
    slots = circuit.slot_values(x)  # (B, S): what the QNN takes as inputs
    aer = AerExecutor(circuit, precision=PRECISION, noise=model, seed=0)
    full = AerExecutor(circuit, precision=PRECISION, noise=model, seed=0, lightcone=False)

    def run_reference():
        return reference.qnn.forward(slots, w), reference.qnn.backward(slots, w)[1]

    def run_aer(executor: AerExecutor):
        return lambda: (executor.expectations(x, w), executor.jacobians(x, w)[1])

    steps = {"reference": run_reference, "aer": run_aer(aer)}
    if not args.skip_full:
        steps["aer-full"] = run_aer(full)
    for step in steps.values():  # warm-up: imports, first Aer call
        step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    grads: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):
        for name, step in steps.items():
            seconds, (_, d_w) = timed(step)
            times[name].append(seconds)
            grads[name] = np.asarray(d_w).reshape(args.batch, 1, circuit.num_weights)

    medians = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"noisy QNN: n={QUBITS} L={LAYERS} batch={args.batch} P={circuit.num_weights} "
        f"p1={NOISE.p1} p2={NOISE.p2} precision=1/{round(1 / PRECISION)} repeats={args.repeats}"
    )
    for name, seconds in medians.items():
        print(f"{name:>10}: {seconds:8.3f} s per forward + backward (median)")
    gap = np.abs(grads["aer"] - grads["reference"]).mean()
    print(f"mean |dW aer - dW reference| = {gap:.4f} (shot noise of one aer value: <= {PRECISION})")
    if "aer-full" in medians:
        batching = medians["reference"] / medians["aer-full"]
        print(f"batching alone (reference / aer-full): {batching:.2f}")
    print(f"Q2 {medians['reference'] / medians['aer']:.2f}")


if __name__ == "__main__":
    main()
