"""Q3: the largest exact QNN training step that fits in 4 GB.

One training step = forward + backward w.r.t. the weights (adjoint method,
float32 real statevector) of the ansatz with L=4 layers of RY + linear CNOTs,
angle encoding, Z on qubit 0, batch 16, then an SGD update; 2 torch threads.
Each n runs in a fresh subprocess, so its peak RSS (VmHWM) is its own.

    python benchmarks/qnn_scale.py [--max-qubits 22] [--budget-mb 4096] [--max-seconds 120]

Prints a table `n  seconds  peak_MB`; the last line is `Q3 <largest n within the budget>`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

QUBITS = (4, 8, 12, 16, 18, 20, 22)
LAYERS, BATCH = 4, 16
REPO = Path(__file__).resolve().parent.parent


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_step(n: int) -> dict[str, float]:
    """Time one training step at n qubits, in this process."""
    import torch

    from quantum.circuits import build_circuit
    from quantum.config import CircuitConfig
    from quantum.executors.exact import ExactExecutor

    torch.set_num_threads(2)
    config = CircuitConfig(
        qubits=n, layers=LAYERS, entanglement="linear", observables=("I" * (n - 1) + "Z",)
    )
    circuit = build_circuit(config)
    executor = ExactExecutor(circuit, dtype=torch.float32, method="adjoint")
    generator = torch.Generator().manual_seed(n)
    x = torch.rand(BATCH, n, generator=generator) * torch.pi  # (B, n)
    y = torch.rand(BATCH, generator=generator) * 2 - 1  # (B,)
    theta = torch.nn.Parameter(torch.rand(circuit.num_weights, generator=generator) * torch.pi)
    optimizer = torch.optim.SGD([theta], lr=0.1)
    start = time.perf_counter()
    out = executor.torch_forward(x, theta)[:, 0]  # (B,)
    loss = ((out - y) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    return {"n": n, "seconds": seconds, "peak_mb": peak_rss_mb()}


def run_child(n: int, timeout: float) -> dict[str, float] | None:
    """One step at n qubits in a fresh interpreter; None if it failed or timed out."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--one", str(n)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired:
        print(f"{n:>2}  timed out after {timeout:.0f} s", flush=True)
        return None
    if proc.returncode != 0:
        print(f"{n:>2}  failed (rc {proc.returncode}): {proc.stderr.strip()[-500:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", type=int, help="run one step at this n and print it as JSON")
    parser.add_argument("--max-qubits", type=int, default=max(QUBITS))
    parser.add_argument("--budget-mb", type=float, default=4096.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_step(args.one)))
        return
    best = 0
    print("n  seconds  peak_MB", flush=True)
    for n in (q for q in QUBITS if q <= args.max_qubits):
        result = run_child(n, timeout=max(600.0, 5 * args.max_seconds))
        if result is None:
            break
        print(f"{n:>2}  {result['seconds']:7.2f}  {result['peak_mb']:7.0f}", flush=True)
        if result["peak_mb"] > args.budget_mb:
            break
        best = n
        if result["seconds"] > args.max_seconds:
            break
    print(f"Q3 {best}")


if __name__ == "__main__":
    main()
