"""F1: qfl's per-round time against a bare Ray map of the same local training.

100 clients per round, a small MLP on digits, the same runner actors for both.
qfl's round is the real one (`pipelines.run.run_round`: a certified RoundOpen
block whose beacon samples the clients, dispatch with deadline, ML-DSA-65
signing of every update, the contract's checks, aggregator actor, evaluation,
a certified block of updates and RoundClose, MLflow metrics, rounds.jsonl,
checkpoint); the bare round submits the same `train` calls round-robin to the
same actors, one call per client, gathers them with one `ray.get` and applies FedAvg
in the driver. A third kind, the batched bare round, is the bare round with qfl's
dispatch (each runner gets its clients in a few batches, `ClientPool.run_round`) and
nothing else: qfl against it is the cost of the ledger, signing checks, aggregator,
evaluation, MLflow and checkpoints alone, printed beside F1.

The kinds alternate in blocks of consecutive rounds (`--block`, 4 by default), so that
all see the same machine state: qfl commits a round (its ledger block certified,
checkpoint, MLflow metrics) while the next one trains, so a qfl round's cost shows only
over consecutive rounds; each block of qfl rounds ends with its last round's commit.

    python benchmarks/round_overhead.py [--rounds 32] [--clients 100] [--no-ledger]

The last line is `F1 <ratio>`: the median over blocks of a qfl block's time over the
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


def batched_round(federation: Federation, t: int) -> None:
    """The bare round with qfl's dispatch: each runner gets its clients in a few batches."""
    weights_ref = ray.put(federation.weights)
    fed = federation.config.federation
    clients = sample_clients(fed.clients, fed.per_round, round_rng(federation.config.seed, t))
    result = federation.pool.run_round(weights_ref, federation.tasks(t, clients), 600.0)
    delta = fedavg([u.delta for u in result.updates], [u.num_samples for u in result.updates])
    apply_update(federation.weights, delta)


def _block(round_fn, rounds: range) -> float:
    """Seconds per round of `round_fn` over consecutive `rounds`."""
    start = time.perf_counter()
    for t in rounds:
        round_fn(t)
    return (time.perf_counter() - start) / len(rounds)


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
    times: dict[str, list[float]] = {"qfl": [], "bare": [], "batched": []}

    def qfl_round(t: int) -> None:
        run_round(federation, tracker, run_dir, t)
        if t % args.block == args.block - 1:
            federation.commit()  # the block's last round commits inside its time

    kinds = {
        "qfl": qfl_round,
        "bare": lambda t: bare_round(federation, t),
        "batched": lambda t: batched_round(federation, t),
    }
    t = 0
    for block in range(-(-(args.warmup + args.rounds) // args.block)):
        # Blocks of consecutive rounds of each kind in turn: a qfl round commits the
        # previous one (its ledger block, checkpoint and metrics) while it trains, so its
        # rounds run back to back, and the block ends with the last commit.
        rounds = range(t, t + args.block)
        measured = {kind: _block(fn, rounds) for kind, fn in kinds.items()}
        t += args.block
        if block * args.block >= args.warmup:
            for kind, seconds in measured.items():
                times[kind].append(seconds)
    tracker.end()
    ray.shutdown()
    med = {kind: statistics.median(v) for kind, v in times.items()}
    # each qfl block against the bare blocks right after it: they saw the same machine
    ratio = {
        kind: statistics.median(q / b for q, b in zip(times["qfl"], times[kind], strict=True))
        for kind in ("bare", "batched")
    }
    print(f"clients per round      {args.clients}")
    placement = federation.validator_placement
    ledger = "off" if args.no_ledger else f"on (4 validators, {placement})"
    print(f"ledger                 {ledger}")
    print(
        f"rounds measured        {len(times['qfl']) * args.block} of each, in blocks of "
        f"{args.block} (after {args.warmup} warm-up)"
    )
    print(f"qfl round  median      {med['qfl'] * 1000:.1f} ms (over blocks: block time / rounds)")
    print(f"bare round median      {med['bare'] * 1000:.1f} ms (one call per client)")
    print(f"batched bare median    {med['batched'] * 1000:.1f} ms (qfl's batched dispatch alone)")
    print(f"qfl / batched bare     {ratio['batched']:.3f} (the cost of everything but dispatch)")
    print(f"ratio of the medians   {med['qfl'] / med['bare']:.3f}")
    print(f"F1 {ratio['bare']:.3f}")


if __name__ == "__main__":
    main()
