"""Q1: forward+backward of a VQC, exact executor vs the qiskit-machine-learning reference.

Circuit: n=8 qubits, L=3 layers of RY + linear CNOTs, angle encoding, one Z
observable (qubit 0), batch 32. The reference is EstimatorQNN (qiskit's exact
StatevectorEstimator, its default parameter-shift gradient) in a TorchConnector;
qfl's exact executor is the batched torch statevector with adjoint gradients.
Both compute the same loss and gradient with respect to the weights, checked
equal before timing, in one run.

    python benchmarks/qnn_exact.py [--repeats 5]

Last line: `Q1 <reference time / exact time>` (target >= 1000).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from quantum.circuits import CircuitConfig, build_circuit
from quantum.executors.exact import ExactExecutor
from quantum.executors.reference import ReferenceExecutor

N, LAYERS, BATCH = 8, 3, 32


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=BATCH)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    config = CircuitConfig(
        qubits=N, layers=LAYERS, entanglement="linear", observables=("I" * (N - 1) + "Z",)
    )
    circuit = build_circuit(config)
    x = rng.uniform(-np.pi, np.pi, size=(args.batch, N))
    w0 = rng.uniform(-np.pi, np.pi, size=circuit.num_weights)

    exact = ExactExecutor(circuit, dtype=torch.float64)
    x_t = torch.tensor(x)

    def exact_step() -> torch.Tensor:
        w = torch.tensor(w0, requires_grad=True)
        exact.torch_forward(x_t, w).sum().backward()
        return w.grad

    reference = ReferenceExecutor(circuit).torch_module(torch.tensor(w0))
    slots = torch.tensor(circuit.slot_values(x))

    def reference_step() -> torch.Tensor:
        reference.zero_grad()
        reference(slots).sum().backward()
        return next(reference.parameters()).grad

    grad_exact = exact_step().numpy()
    grad_reference = reference_step().detach().numpy()
    assert np.allclose(grad_exact, grad_reference, atol=1e-6), "executors disagree"
    t_exact = timed(exact_step, args.repeats * 20)
    t_reference = timed(reference_step, args.repeats)
    print(f"circuit                n={N} L={LAYERS} batch={args.batch}, linear CNOTs, one Z")
    print(f"max |grad difference|  {np.abs(grad_exact - grad_reference).max():.2e}")
    print(f"reference fwd+bwd      {t_reference * 1e3:.1f} ms (EstimatorQNN + TorchConnector)")
    print(f"exact fwd+bwd          {t_exact * 1e3:.3f} ms (torch statevector, adjoint)")
    print(f"Q1 {t_reference / t_exact:.0f}")


if __name__ == "__main__":
    main()
