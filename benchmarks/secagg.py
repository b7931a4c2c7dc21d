"""S1: a secure-aggregation round against a plain aggregation round, 100 clients x 100k.

Both kinds of round run every client in this one process, one after the other (torch and BLAS
on one thread, as in one-CPU runner actors): each client trains its copy of a
100,044-parameter MLP on its digits shard for one local epoch, then

* plain: the server takes the weighted mean of the float updates (`fedavg`);
* secure: the full protocol of `federated.secagg` (ML-KEM-768 key exchange signed with
  ML-DSA-65 and verified by every recipient, Shamir shares of every seed sealed with
  AES-GCM, fixed-point masking with one AES-256-CTR pair mask per pair and side, the
  server's unmasking), optionally with clients dropping out before masking.

Long-term keys (ML-KEM, ML-DSA) come from the ledger and are made before timing. Each
round trains once and aggregates the same updates both ways, so the two kinds of round
differ only in their aggregation: plain round = training + fedavg, secure round =
training + secure aggregation, medians over the timed rounds after one warm-up round.
Every secure round checks that its fixed-point sum equals the plain fixed-point sum
exactly (and, without dropouts, that its weighted mean matches fedavg).

    python benchmarks/secagg.py [--clients 100] [--hidden 770 64] [--dropouts 0] [--rounds 3]

Prints the stage times, then a last line `S1 <ratio>` (secure round / plain round).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from federated.aggregate import apply_update, fedavg
from federated.config import ModelConfig, TrainConfig
from federated.data import build_federated_data
from federated.models import build_model, get_flat
from federated.secagg import (
    Roster,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
    encode,
    kem_public_key,
    kem_seed,
    round_secret,
    threshold_count,
)
from federated.train import local_train
from ledger.crypto import Verifier, signer_from_seed
from ledger.keys import derive_seed, master_secret_from_run_seed


def train_all(model, data, weights, clients, round_):
    """Every client's local update, in client order."""
    config = TrainConfig(epochs=1)
    return [
        local_train(model, data.client(k), weights, config, seed=1000 * round_ + k) for k in clients
    ]


def secure_sum(results, weights, clients, keys, config: SecAggConfig, round_, dropouts, timer):
    """One full protocol run; returns the result and the clients whose inputs it includes."""
    master, kem_keys, signers = keys
    roster = Roster(
        round=round_,
        threshold=threshold_count(config, len(clients)),
        kem_keys=kem_keys,
        signing_keys={k: s.public_key for k, s in signers.items()},
    )
    verifier = Verifier()  # one per process; caches nothing (cache_size=0)
    start = time.perf_counter()
    sa_clients = {
        k: SecAggClient(
            k,
            roster,
            kem_seed=kem_seed(master, k),
            signer=signers[k],
            secret=round_secret(master, k, round_),
            scale=config.scale,
            verifier=verifier,
        )
        for k in clients
    }
    server = SecAggServer(roster, scale=config.scale, verifier=verifier)
    exchanges = server.receive_key_exchanges([c.key_exchange() for c in sa_clients.values()])
    timer["key exchange"] = time.perf_counter() - start
    start = time.perf_counter()
    bundles = [sa_clients[k].share_keys(exchanges) for k in clients]
    deliveries = server.route_shares(bundles)
    timer["shares"] = time.perf_counter() - start
    start = time.perf_counter()
    gone = set(clients[:dropouts])
    masked = [
        sa_clients[k].mask(deliveries[k], r.delta, w)
        for k, r, w in zip(clients, results, weights, strict=True)
        if k not in gone
    ]
    timer["masking"] = time.perf_counter() - start
    start = time.perf_counter()
    request = server.collect_masked(masked)
    responses = [sa_clients[k].unmask(request) for k in request.survivors]
    result = server.finish(responses)
    timer["unmasking"] = time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--hidden", type=int, nargs="+", default=[770, 64])
    parser.add_argument("--dropouts", type=int, default=0, help="clients lost before masking")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each kind")
    args = parser.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(1)  # BLAS on one thread too, as in a one-CPU runner actor
    config = SecAggConfig(enabled=True)
    data = build_federated_data("digits", n_clients=args.clients, partition="iid", seed=0)
    model = build_model(
        ModelConfig(hidden=tuple(args.hidden)), data.input_shape, data.num_classes, seed=0
    )
    weights = get_flat(model)
    clients = list(range(args.clients))
    master = master_secret_from_run_seed(0)
    kem_keys = {k: kem_public_key(master, k) for k in clients}
    signers = {k: signer_from_seed(derive_seed(master, "client", k)) for k in clients}
    keys = (master, kem_keys, signers)
    total_samples = sum(len(data.client_indices[k]) for k in clients)
    print(
        f"clients {args.clients}, parameters {weights.size}, threshold "
        f"{threshold_count(config, args.clients)}, signatures {Verifier().backend_name}, "
        f"dropouts {args.dropouts}"
    )

    times: dict[str, list[float]] = {"training": [], "fedavg": [], "secure aggregation": []}
    stages: dict[str, list[float]] = {}
    for round_ in range(1 + args.rounds):  # round 0 warms up, the others are timed
        start = time.perf_counter()
        results = train_all(model, data, weights, clients, round_)
        trained = time.perf_counter()
        delta = fedavg([r.delta for r in results], [r.num_samples for r in results])
        averaged = time.perf_counter()
        timer: dict[str, float] = {}
        shares = [r.num_samples / total_samples for r in results]
        result = secure_sum(results, shares, clients, keys, config, round_, args.dropouts, timer)
        secured = time.perf_counter()
        if round_ > 0:
            times["training"].append(trained - start)
            times["fedavg"].append(averaged - trained)
            times["secure aggregation"].append(secured - averaged)
            for name, seconds in timer.items():
                stages.setdefault(name, []).append(seconds)

        included = [clients.index(k) for k in result.included]
        plain_fixed = np.zeros(weights.size, dtype=np.uint32)
        for i in included:
            plain_fixed += encode(results[i].delta * shares[i], config.scale, len(included))
        if not np.array_equal(plain_fixed, result.fixed_point_total):
            raise SystemExit("secure sum differs from the plain fixed-point sum")
        rounding = len(included) * 0.5 / config.scale + 1e-6  # fixed point, per coordinate
        if args.dropouts == 0 and not np.allclose(result.mean, delta, rtol=0, atol=rounding):
            raise SystemExit("secure mean differs from fedavg")
        weights = apply_update(weights, delta)

    train, plain_agg, secure_agg = (statistics.median(times[k]) for k in times)
    detail = ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in stages.items())
    print(f"medians of {args.rounds} rounds; both kinds aggregate the same trained updates")
    print(f"training (100 clients, shared): {train:.3f} s")
    print(f"plain aggregation (fedavg): {plain_agg:.4f} s")
    print(f"secure aggregation: {secure_agg:.3f} s ({detail})")
    print(f"secure aggregation alone / fedavg alone: {secure_agg / plain_agg:.0f}x")
    print(f"plain round {train + plain_agg:.3f} s, secure round {train + secure_agg:.3f} s")
    print(f"S1 {(train + secure_agg) / (train + plain_agg):.2f}")


if __name__ == "__main__":
    main()
