"""F2: 1,000 then 10,000 registered clients, 100 sampled per round, all of a run's features on.

For each registry size the script builds a synthetic federation (20 examples per
client, 64 features, 10 classes: digits is too small for 10,000 clients), then runs
5 real rounds (`pipelines.run.run_round`: ledger with 4 validators, ML-DSA-65 signed
updates, contract checks, certified blocks, MLflow, checkpoints) with 100 clients
sampled per round. A sampler thread adds up the memory (proportional set size) of the driver and of
every process of the local Ray it started (GCS, raylet, the runners, the aggregator,
the ledger keeper and its validators) every 50 ms; the peak over both sizes is
reported, and the median round time at 10,000 over the one at 1,000.

    python benchmarks/scale.py [--rounds 5] [--sizes 1000 10000]

The last line is `F2 <peak GB> <round time ratio>` (targets: < 4 GB and <= 1.2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import ray

from federated.data import ArrayDataset, FederatedData
from pipelines.config import load_config
from pipelines.run import Federation, run_round
from pipelines.tracking import Tracker

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
PER_CLIENT, FEATURES, CLASSES = 20, 64, 10


def synthetic(n_clients: int, seed: int = 0) -> FederatedData:
    """Gaussian class clusters, `PER_CLIENT` training rows per client, 2,000 test rows."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0.0, 1.0, size=(CLASSES, FEATURES)).astype(np.float32)

    def draw(n: int) -> ArrayDataset:
        y = rng.integers(0, CLASSES, size=n)
        x = centers[y] + rng.normal(0.0, 1.0, size=(n, FEATURES)).astype(np.float32)
        return ArrayDataset(x.astype(np.float32), y.astype(np.int64))

    train = draw(n_clients * PER_CLIENT)
    indices = tuple(np.arange(k * PER_CLIENT, (k + 1) * PER_CLIENT) for k in range(n_clients))
    return FederatedData(train=train, test=draw(2000), client_indices=indices, num_classes=CLASSES)


class MemorySampler:
    """Peak summed PSS of this process and all its descendants (its local Ray)."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            # the local Ray this driver started (GCS, raylet, workers) descends from it
            for process in [me, *me.children(recursive=True)]:
                try:
                    # PSS: shared pages (torch, qiskit libraries) count once, split among
                    # the processes that map them; a sum of RSS would count them per process
                    total += process.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            self.peak = max(self.peak, total)
            time.sleep(self.interval_s)


def measure(n_clients: int, rounds: int, workdir: Path) -> list[float]:
    """Round times (seconds) of `rounds` rounds with `n_clients` registered clients."""
    config = load_config(
        QUICKSTART,
        [
            f"federation.clients={n_clients}",
            "federation.clients_per_round=100",
            f"federation.rounds={rounds}",
            "train.epochs=1",
            f"output.runs_dir={workdir / 'runs'}",
            f"tracking.experiment=scale-{n_clients}",
        ],
    )
    data = synthetic(n_clients)
    tracker = Tracker.start(f"sqlite:///{workdir / 'mlflow.db'}", "scale", str(n_clients), {})
    run_dir = workdir / "runs" / tracker.run_id
    run_dir.mkdir(parents=True)
    start = time.perf_counter()
    federation = Federation(config, data, run_id=tracker.run_id, ledger_path=run_dir / "ledger.db")
    print(f"{n_clients:>6} clients: set up in {time.perf_counter() - start:.1f} s", flush=True)
    times = []
    for t in range(rounds):
        start = time.perf_counter()
        run_round(federation, tracker, run_dir, t, last=t == rounds - 1)
        times.append(time.perf_counter() - start)
    federation.close_ledger()
    tracker.end()
    for actor in [*federation.pool.actors, federation.aggregator, federation.keeper]:
        ray.kill(actor)
    print(f"{n_clients:>6} clients: rounds {', '.join(f'{s:.2f}' for s in times)} s", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 10000])
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="qfl-scale-"))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    medians = []
    with MemorySampler() as memory:
        for n in args.sizes:
            times = measure(n, args.rounds, workdir / str(n))
            medians.append(statistics.median(times[1:] or times))  # round 1 warms up
    ray.shutdown()
    small, large = args.sizes
    print(f"median round  {small}: {medians[0]:.3f} s   {large}: {medians[1]:.3f} s")
    print(f"peak memory (driver + Ray workers): {memory.peak / 2**30:.2f} GB")
    print(f"F2 {memory.peak / 2**30:.2f} {medians[1] / medians[0]:.3f}")


if __name__ == "__main__":
    main()
