"""F1: qfl's per-round time against a bare Ray map of the same local training.

100 clients per round, a small MLP on digits, the same runner actors for both.
qfl's round is the real one (`pipelines.run.run_round`: a certified RoundOpen
block whose beacon samples the clients, dispatch with deadline, ML-DSA-65
signing of every update, the contract's checks, aggregator actor, evaluation,
a certified block of updates and RoundClose, MLflow metrics, rounds.jsonl,
checkpoint); the bare round submits the same `train` calls round-robin to the
same actors, gathers them with one `ray.get` and applies FedAvg in the driver.
The two alternate in blocks of consecutive rounds (`--block`, 4 by default), so that both
see the same machine state: qfl commits a round (its ledger block certified, checkpoint,
MLflow metrics) while the next one trains, so a qfl round's cost shows only over
consecutive rounds; each block of qfl rounds ends with its last round's commit.

    python benchmarks/round_overhead.py [--rounds 20] [--clients 100] [--no-ledger]

The last line is `F1 <ratio>`: the median over block pairs of a qfl block's time over the
bare block's right after it (target <= 1.25).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray

from federated.aggregate import apply_update, fedavg
from federated.data import build_federated_data
from federated.sampling import round_rng, sample_clients
from pipelines.config import load_config
from pipelines.run import Federation, run_round
from pipelines.tracking import Tracker

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def bare_round(federation: Federation, t: int) -> None:
    """The same training calls over the same actors, with nothing around them."""
    weights_ref = ray.put(federation.weights)
    fed = federation.config.federation
    clients = sample_clients(fed.clients, fed.per_round, round_rng(federation.config.seed, t))
    tasks = federation.tasks(t, clients)
    actors = federation.pool.actors
    refs = [actors[i % len(actors)].train.remote(weights_ref, task) for i, task in enumerate(tasks)]
    updates = ray.get(refs)
    delta = fedavg([u.delta for u in updates], [u.num_samples for u in updates])
    apply_update(federation.weights, delta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=32)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--block", type=int, default=4, help="consecutive rounds of each kind between switches"
    )
    parser.add_argument(
        "--no-ledger", action="store_true", help="measure without the signed ledger"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. ledger.validator_placement=in_process",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="qfl-bench-"))
    config = load_config(
        QUICKSTART,
        [
            f"federation.clients={args.clients}",
            f"federation.clients_per_round={args.clients}",
            "data.partition=iid",
            "train.epochs=1",
            f"output.runs_dir={workdir / 'runs'}",
            f"ledger.enabled={'false' if args.no_ledger else 'true'}",
            *args.overrides,
        ],
    )
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    data = build_federated_data("digits", n_clients=args.clients, partition="iid", seed=config.seed)
    tracker = Tracker.start(f"sqlite:///{workdir / 'mlflow.db'}", "bench", "round_overhead", {})
    run_dir = workdir / "runs" / tracker.run_id
    run_dir.mkdir(parents=True)
    federation = Federation(config, data, run_id=tracker.run_id, ledger_path=run_dir / "ledger.db")
    qfl_times, bare_times = [], []
    t = 0
    for block in range(-(-(args.warmup + args.rounds) // args.block)):
        # Blocks of consecutive rounds: a qfl round commits the previous one (its ledger
        # block, checkpoint and metrics) while it trains, so its rounds run back to back,
        # and the block ends with the last commit; then as many bare rounds.
        start = time.perf_counter()
        for i in range(args.block):
            run_round(federation, tracker, run_dir, t + i)
        federation.commit()  # the block's last round commits inside its time
        qfl_s = (time.perf_counter() - start) / args.block
        start = time.perf_counter()
        for i in range(args.block):
            bare_round(federation, t + i)
        bare_s = (time.perf_counter() - start) / args.block
        t += args.block
        if block * args.block >= args.warmup:
            qfl_times.append(qfl_s)
            bare_times.append(bare_s)
    tracker.end()
    ray.shutdown()
    qfl_med, bare_med = statistics.median(qfl_times), statistics.median(bare_times)
    # each qfl block against the bare block right after it: the pair saw the same machine
    ratio = statistics.median(q / b for q, b in zip(qfl_times, bare_times, strict=True))
    print(f"clients per round      {args.clients}")
    placement = federation.validator_placement
    ledger = "off" if args.no_ledger else f"on (4 validators, {placement})"
    print(f"ledger                 {ledger}")
    print(
        f"rounds measured        {len(qfl_times) * args.block} of each, in blocks of "
        f"{args.block} (after {args.warmup} warm-up)"
    )
    print(f"qfl round  median      {qfl_med * 1000:.1f} ms (over blocks: block time / rounds)")
    print(f"bare round median      {bare_med * 1000:.1f} ms")
    print(f"ratio of the medians   {qfl_med / bare_med:.3f}")
    print(f"F1 {ratio:.3f}")


if __name__ == "__main__":
    main()
