"""Q1: forward+backward of a VQC, exact executor vs the qiskit-machine-learning reference.

Circuit: n=8 qubits, L=3 layers of RY + linear CNOTs, angle encoding, one Z
observable (qubit 0), batch 32. The reference is EstimatorQNN (qiskit's exact
StatevectorEstimator, its default parameter-shift gradient) in a TorchConnector;
qfl's exact executor takes its NumPy fast path here (quantum/fastpath.py: the
whole forward and adjoint backward as one autograd node; larger circuits use the
batched torch statevector). Both compute the same loss and gradient with respect
to the weights, checked before timing, in one run.

Gradient check. EstimatorQNN's own gradient (float64, parameter shift on an
exact statevector) equals the exact executor's to ~1e-15. TorchConnector,
though, works in float32: it stores the weights as float32
(`torch.tensor(initial_weights, dtype=torch.float)`), casts the per-sample
Jacobians to float32 and contracts them with the output gradient in float32.
Its gradient is therefore compared with the exact one at the float32-rounded
weights, within the float32 rounding bound of that contraction,
B * 2**-24 * sum_b |J_b| + 2**-24 |grad| (1e-6 as before was not a bound: the
difference is ~1.4e-6).

    python benchmarks/qnn_exact.py [--repeats 5]

Last line: `Q1 <reference time / exact time>` (target >= 1000).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from quantum.circuits import build_circuit
from quantum.config import CircuitConfig
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

    reference_executor = ReferenceExecutor(circuit)
    reference = reference_executor.torch_module(torch.tensor(w0))
    slots = torch.tensor(circuit.slot_values(x))

    def reference_step() -> torch.Tensor:
        reference.zero_grad()
        reference(slots).sum().backward()
        return next(reference.parameters()).grad

    grad_exact = exact_step().numpy()
    # EstimatorQNN itself, float64: the same gradient up to rounding
    _, d_w = reference_executor.jacobians(x, w0, inputs_grad=False)  # (B, O, P)
    diff_qnn = np.abs(grad_exact - d_w.sum((0, 1))).max()
    assert diff_qnn < 1e-10, f"exact and EstimatorQNN gradients differ by {diff_qnn:.2e}"
    # TorchConnector: float32 weights, float32 Jacobians and contraction
    grad_reference = reference_step().detach().double().numpy()
    w32 = next(reference.parameters()).detach().double().numpy()  # the weights it really uses
    _, jac = exact.jacobians(x, w32, inputs_grad=False)  # (B, O, P)
    grad_w32 = jac.sum((0, 1))
    u = 2.0**-24  # float32 unit roundoff
    bound = args.batch * u * np.abs(jac).sum((0, 1)) + u * np.abs(grad_w32) + 1e-12
    diff_connector = np.abs(grad_w32 - grad_reference)
    assert (diff_connector <= bound).all(), "exact and TorchConnector gradients differ"
    t_exact = timed(exact_step, args.repeats * 20)
    t_reference = timed(reference_step, args.repeats)
    path = "NumPy fast path" if exact.fast_path is not None else "torch statevector"
    print(f"circuit                n={N} L={LAYERS} batch={args.batch}, linear CNOTs, one Z")
    print(f"max |grad difference|  {diff_qnn:.2e} vs EstimatorQNN (float64)")
    print(
        f"                       {diff_connector.max():.2e} vs TorchConnector (float32, "
        f"rounding bound {bound.max():.1e})"
    )
    print(f"reference fwd+bwd      {t_reference * 1e3:.1f} ms (EstimatorQNN + TorchConnector)")
    print(f"exact fwd+bwd          {t_exact * 1e3:.3f} ms ({path}, adjoint)")
    print(f"Q1 {t_reference / t_exact:.0f}")


if __name__ == "__main__":
    main()
