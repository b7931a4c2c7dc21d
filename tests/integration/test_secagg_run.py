"""Secure aggregation in real runs: same weights as plain FedAvg, dropouts, clean aborts.

Faults are injected through the runner actors' test-only hook (`inject_fault`): a client's
step raises, or its runner process exits, at a chosen stage of a chosen round.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import ray
from conftest import REPO
from mlflow.tracking import MlflowClient

from actors.aggregator import AggregatorActor
from actors.pool import ClientPool
from federated.aggregate import AggregationConfig
from federated.client import ClientRunner, SecAggSpec
from federated.config import ModelConfig, TrainConfig
from federated.data import build_federated_data
from federated.messages import ClientTask
from federated.models import build_model, get_flat
from federated.privacy import PrivacyConfig
from federated.secagg import (
    MaskedInput,
    Roster,
    SecAggConfig,
    SecAggError,
    SecAggServer,
    digest_carrier,
    kem_public_key,
    masked_digest,
)
from ledger.contract import Contract
from ledger.crypto import Verifier, resolve_backend
from ledger.keeper import LedgerConfig, LedgerKeeper, SigningSpec, client_public_keys
from ledger.keys import master_secret_from_run_seed
from ledger.records import Genesis
from ledger.store import open_readonly
from pipelines.cli import main as cli_main
from pipelines.config import ExperimentConfig, load_config
from pipelines.run import Federation, experiment_data, run_round
from pipelines.secure_round import RosterKeys, SecureRound, build_roster
from pipelines.tracking import Tracker
from qfl.errors import ConfigError, TrainingError

CONFIG = REPO / "configs" / "secagg.yaml"
CLIENTS = 10
THRESHOLD = 6  # ceil(0.6 * 10)


@dataclass
class Run:
    weights: list[np.ndarray]  # initial, then after each round
    rounds: list[dict]  # rounds.jsonl
    metrics: dict[str, list[float]]  # MLflow history by round
    sessions: list[int]  # secure state held by each live runner after the run
    ledger: Path | None
    scale: float
    key_source: str | None  # where the rosters' keys came from (None: no secure rounds)


def _config(tmp: Path, *overrides: str) -> ExperimentConfig:
    return load_config(CONFIG, [f"output.runs_dir={tmp / 'runs'}", *overrides])


def _run(tmp: Path, *overrides: str, faults=()) -> Run:
    """A run of configs/secagg.yaml driven round by round, with faults injected first.

    faults: (round, client, stage, kill); each runner gets every fault, and only the one
    that serves the client in that round meets it.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    config = _config(tmp, *overrides)
    data = experiment_data(config)
    uri = f"sqlite:///{tmp.parent / 'mlflow.db'}"
    tracker = Tracker.start(uri, "secagg-test", tmp.name, {})
    run_dir = tmp / "runs" / tracker.run_id
    run_dir.mkdir(parents=True)
    ledger_path = run_dir / "ledger.db"
    federation = Federation(config, data, run_id=tracker.run_id, ledger_path=ledger_path)
    key_source = None if federation.secure is None else federation.secure.keys.source
    try:
        actors = federation.pool.actors
        ray.get([a.inject_fault.remote(*fault) for fault in faults for a in actors])
        weights = [federation.weights.copy()]
        rounds = config.federation.rounds
        for t in range(rounds):
            run_round(federation, tracker, run_dir, t, last=t == rounds - 1)
            weights.append(federation.weights.copy())
        federation.close_ledger()
        sessions = []
        for actor in actors:
            with contextlib.suppress(ray.exceptions.RayActorError):  # a runner the test killed
                sessions.append(ray.get(actor.secure_sessions.remote(), timeout=30))
        tracker.flush()
        tracker.end("FINISHED")
    finally:
        del federation  # frees the runners' CPUs for the next run
    client = MlflowClient(uri)
    keys = client.get_run(tracker.run_id).data.metrics
    metrics = {
        key: [m.value for m in sorted(client.get_metric_history(tracker.run_id, key), key=_step)]
        for key in keys
    }
    lines = (run_dir / "rounds.jsonl").read_text().splitlines()
    return Run(
        weights=weights,
        rounds=[json.loads(line) for line in lines],
        metrics=metrics,
        sessions=sessions,
        ledger=ledger_path if config.ledger.enabled else None,
        scale=config.secagg.scale,
        key_source=key_source,
    )


def _step(metric) -> int:
    return metric.step


def _assert_fixed_point_close(secure: Run, plain: Run, included: list[int]) -> None:
    """Each round within its fixed-point bound, and a small multiple of it later on.

    Applied to the same weights, the secure update differs from FedAvg's only by the
    fixed-point rounding of each included client's scaled update, at most 1/2 per client in
    units of 1/scale, plus float32 rounding; later rounds train from slightly different
    weights, so the gap may grow (a factor 10 allowed; about 1 to 3 measured).
    """
    assert np.array_equal(secure.weights[0], plain.weights[0])
    total = 0.0
    for t, n in enumerate(included):
        total += n * 0.5 / secure.scale + 2e-7
        gap = float(np.max(np.abs(secure.weights[t + 1] - plain.weights[t + 1])))
        limit = total if t == 0 else 10 * total
        assert gap <= limit, (t, gap, limit)
    # the model did move: the comparison is not between two unchanged vectors
    assert float(np.max(np.abs(secure.weights[-1] - secure.weights[0]))) > 1e-2


# --------------------------------------------------------------------------- config


def test_config_enables_secagg_with_a_validated_section(tmp_path):
    config = _config(tmp_path)
    assert config.secagg.enabled and config.secagg.threshold == 0.6
    assert config.secagg.scale == 2.0**20
    assert _config(tmp_path, "secagg.enabled=false").secagg.enabled is False


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("aggregation.rule=median", "median"),
        ("aggregation.rule=hybrid", "hybrid"),
        ("aggregation.clip_norm=1.0", "aggregation.clip_norm"),
        ("ledger.norm_bound=5.0", "ledger.norm_bound"),
        ("secagg.threshold=11", "secagg.threshold"),
        ("secagg.threshold=5", "majority"),
        ("federation.clients_per_round=1", "t=1"),
    ],
)
def test_config_rejects_what_secure_aggregation_cannot_do(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field):
        _config(tmp_path, override)
    _config(tmp_path, override, "secagg.enabled=false")  # only secure aggregation objects


def test_config_checks_fixed_point_range_under_central_dp(tmp_path):
    dp = ["privacy.mode=central", "privacy.noise_multiplier=1.0"]
    _config(tmp_path, *dp, "privacy.clip=100.0")  # 10 * 100 * 2^20 < 2^31
    with pytest.raises(ConfigError, match="overflow"):
        _config(tmp_path, *dp, "privacy.clip=300.0")


# --------------------------------------------------------------------------- runner, no Ray


def test_runner_signs_the_masked_input_and_the_ledger_checks_exactly_that(tmp_path):
    """The ledger's Update record binds the masked input the server receives (no Ray)."""
    data = build_federated_data("digits", n_clients=4, partition="iid", seed=0)
    model = ModelConfig(kind="mlp", hidden=(8,))
    weights = get_flat(build_model(model, data.input_shape, data.num_classes, seed=0))
    master = master_secret_from_run_seed(0)
    backend = resolve_backend("auto")
    signing = SigningSpec(run_id="run", master_secret=master, backend=backend)
    runner = ClientRunner(data, model, TrainConfig(epochs=1), signing=signing)
    spec = SecAggSpec(master_secret=master, backend=backend, scale=2.0**16)
    ids = (0, 1, 2, 3)
    registry = client_public_keys(master, 4, backend)
    roster = Roster(
        round=0,
        threshold=3,
        kem_keys={k: kem_public_key(master, k) for k in ids},
        signing_keys=registry,
    )
    server = SecAggServer(roster, scale=spec.scale)
    trained = [
        runner.secure_train(ClientTask(client_id=k, round=0, seed=k), weights, roster, spec)
        for k in ids
    ]
    assert runner.secure_sessions == 4
    exchanges = server.receive_key_exchanges([s.exchange for s in trained])
    bundles = runner.secure_share(0, exchanges, ids)
    deliveries = server.route_shares([bundles[k] for k in ids])
    masked = runner.secure_mask(0, deliveries, dict.fromkeys(ids, 0.25))
    contract = Contract(
        "run", registry, num_params=weights.size, norm_bound=None, verifier=Verifier(backend)
    )
    contract.open_round(0, ids)
    pairs = [
        (masked[k].record, digest_carrier(masked_digest(masked[k].masked), weights.size))
        for k in ids[:3]
    ]
    # client 3's masked input altered in one word after signing: the contract refuses it
    original = masked[3].masked
    words = original.masked.copy()
    words[7] += np.uint32(1)
    forged = MaskedInput(round=0, sender=3, weight=original.weight, masked=words)
    pairs.append((masked[3].record, digest_carrier(masked_digest(forged), weights.size)))
    accepted, rejections = contract.admit(pairs)
    assert [u.client_id for u, _ in accepted] == [0, 1, 2]
    assert [(r.client_id, r.rule) for r in rejections] == [(3, "bad_signature")]
    request = server.collect_masked([masked[k].masked for k in ids[:3]])
    responses = runner.secure_unmask(0, request, request.survivors)
    result = server.finish([responses[k] for k in request.survivors])
    assert result.included == (0, 1, 2) and result.dropped == (3,)
    assert runner.secure_sessions == 1  # client 3 never unmasked; the round's end drops it
    runner.secure_end(0)
    assert runner.secure_sessions == 0
    # the unmasked sum is the weighted sum of the three clients' updates; each update was
    # only ever on the runner, so rebuild it with plain training of the same tasks
    plain = [runner.run(ClientTask(client_id=k, round=0, seed=k), weights) for k in ids[:3]]
    expected = sum(0.25 * u.delta.astype(np.float64) for u in plain)
    assert np.max(np.abs(result.total - expected)) <= 3 * 0.5 / spec.scale


# --------------------------------------------------------------------------- keys from the ledger

MITM_MASTER = master_secret_from_run_seed(99)  # a man in the middle's own key root


def _genesis(master: bytes, n_clients: int, path: Path) -> Genesis:
    """The Genesis a run's keeper writes with secure aggregation on (in process, no Ray)."""
    keeper = LedgerKeeper(
        path,
        run_id="run",
        master_secret=master,
        n_clients=n_clients,
        num_params=8,
        config_bytes=b"config",
        config=LedgerConfig(
            validators=1, backend="cryptography", qrng="seeded", validator_placement="in_process"
        ),
        seed=0,
        register_kem_keys=True,
    )
    keeper.close()
    return keeper.genesis


def _substituted(genesis: Genesis, victims) -> Genesis:
    """`genesis` as a man in the middle on key registration would have it certified: the
    victims' encapsulation keys are his own."""
    kem = dict(genesis.kem_keys) | {k: kem_public_key(MITM_MASTER, k) for k in victims}
    return Genesis(**{**genesis.model_dump(), "kem_keys": sorted(kem.items())})


def test_rosters_take_the_keys_genesis_registers_and_derive_them_only_without_a_ledger(
    tmp_path,
):
    master = master_secret_from_run_seed(0)
    genesis = _genesis(master, 6, tmp_path / "l.db")
    config = SecAggConfig(enabled=True, threshold=0.6)
    from_ledger = RosterKeys.from_genesis(genesis)
    derived = RosterKeys.derived(master, "cryptography")
    assert (from_ledger.source, derived.source) == ("ledger", "derived")
    roster = build_roster(config, from_ledger, 4, [5, 0, 3, 2])
    assert roster.participants == (0, 2, 3, 5) and roster.threshold == 3
    assert roster == build_roster(config, derived, 4, [0, 2, 3, 5])
    assert roster.kem_keys == {k: dict(genesis.kem_keys)[k] for k in (0, 2, 3, 5)}
    assert roster.signing_keys == {k: dict(genesis.clients)[k] for k in (0, 2, 3, 5)}
    # the ledger is the source: a substituted key reaches the roster as it is registered
    mitm = build_roster(config, RosterKeys.from_genesis(_substituted(genesis, [3])), 4, [0, 3])
    assert mitm.kem_keys[3] == kem_public_key(MITM_MASTER, 3) != roster.kem_keys[3]
    with pytest.raises(TrainingError, match="no ML-KEM"):
        RosterKeys.from_genesis(genesis.model_copy(update={"kem_keys": ()}))
    with pytest.raises(TrainingError, match="client 6 has no ML-KEM-768 key"):
        build_roster(config, from_ledger, 4, [0, 6])


def test_a_client_whose_kem_key_was_substituted_on_the_ledger_refuses_the_round(tmp_path):
    """On the runner (no Ray): the victim's first step fails, the others sum exactly."""
    data = build_federated_data("digits", n_clients=5, partition="iid", seed=0)
    model = ModelConfig(kind="mlp", hidden=(8,))
    weights = get_flat(build_model(model, data.input_shape, data.num_classes, seed=0))
    master = master_secret_from_run_seed(0)
    genesis = _substituted(_genesis(master, 5, tmp_path / "l.db"), [2])
    spec = SecAggSpec(master_secret=master, backend="cryptography", scale=2.0**16)
    roster = build_roster(
        SecAggConfig(enabled=True, threshold=0.6), RosterKeys.from_genesis(genesis), 0, range(5)
    )
    runner = ClientRunner(data, model, TrainConfig(epochs=1))
    tasks = {k: ClientTask(client_id=k, round=0, seed=k) for k in range(5)}
    with pytest.raises(SecAggError, match="registered key"):
        runner.secure_train(tasks[2], weights, roster, spec)
    others = (0, 1, 3, 4)
    server = SecAggServer(roster, scale=spec.scale)
    trained = [runner.secure_train(tasks[k], weights, roster, spec) for k in others]
    exchanges = server.receive_key_exchanges([s.exchange for s in trained])
    assert server.u1 == others
    bundles = runner.secure_share(0, exchanges, others)
    deliveries = server.route_shares([bundles[k] for k in others])
    masked = runner.secure_mask(0, deliveries, dict.fromkeys(others, 1.0))
    request = server.collect_masked([masked[k].masked for k in others])
    responses = runner.secure_unmask(0, request, others)
    result = server.finish([responses[k] for k in others])
    plain = [runner.run(tasks[k], weights) for k in others]
    expected = sum(u.delta.astype(np.float64) for u in plain)
    assert np.max(np.abs(result.total - expected)) <= 4 * 0.5 / spec.scale


@pytest.mark.slow  # real runners, two secure rounds: keeps the default suite under 25 min
@pytest.mark.usefixtures("ray_local")
def test_substituted_kem_keys_drop_their_clients_or_abort_the_secure_round(tmp_path):
    """With real runners: one substituted key leaves its client out of an exact FedAvg;
    three of six (t = 4) abort the round cleanly, the weights unchanged."""
    data = build_federated_data("digits", n_clients=6, partition="iid", seed=0)
    model = ModelConfig(kind="mlp", hidden=(8,))
    weights = get_flat(build_model(model, data.input_shape, data.num_classes, seed=0))
    master = master_secret_from_run_seed(0)
    genesis = _genesis(master, 6, tmp_path / "l.db")
    pool = ClientPool.from_data(data, model, TrainConfig(epochs=1), runners=1, num_cpus=0.5)
    aggregator = AggregatorActor.remote(AggregationConfig())
    config = SecAggConfig(enabled=True, threshold=0.6, scale=2.0**20)

    def secure_round(victims) -> SecureRound:
        return SecureRound(
            config,
            pool,
            aggregator,
            aggregation=AggregationConfig(),
            privacy=PrivacyConfig(),
            master_secret=master,
            backend="cryptography",
            num_params=weights.size,
            timeout_s=120,
            keys=RosterKeys.from_genesis(_substituted(genesis, victims)),
        )

    try:
        ref = ray.put(weights)
        tasks = [ClientTask(client_id=k, round=0, seed=k) for k in range(6)]
        secure = secure_round([2])
        result = secure.run_round(ref, tasks, 120)
        assert [f.client_id for f in result.failures] == [2]
        assert "registered key" in result.failures[0].reason
        sent = {u.client_id for u in result.updates}
        assert sent == {0, 1, 3, 4, 5}
        stepped, metrics = secure.aggregate(0, weights, sent, result)
        assert (metrics["secagg_failed"], metrics["secagg_included"]) == (0.0, 5.0)
        assert metrics["secagg_dropped"] == 1.0
        plain = pool.run_round(ref, [t for t in tasks if t.client_id != 2], 120)
        n = np.array([u.num_samples for u in plain.updates], dtype=np.float64)
        deltas = np.stack([u.delta.astype(np.float64) for u in plain.updates])
        expected = weights + (n[:, None] * deltas).sum(axis=0) / n.sum()
        assert np.max(np.abs(stepped - expected)) <= 5 * 0.5 / config.scale + 2e-7
        assert np.max(np.abs(stepped - weights)) > 1e-3  # the round did move the model

        tasks = [ClientTask(client_id=k, round=1, seed=k) for k in range(6)]
        secure = secure_round([0, 1, 2])
        result = secure.run_round(ray.put(stepped), tasks, 120)
        assert result.updates == []
        again, metrics = secure.aggregate(1, stepped, set(), result)
        assert metrics["secagg_failed"] == 1.0 and np.array_equal(again, stepped)
        reasons = {f.client_id: f.reason for f in result.failures}
        assert sorted(reasons) == list(range(6))
        assert all("registered key" in reasons[k] for k in (0, 1, 2))
        assert all("aborted at key_exchange" in reasons[k] for k in (3, 4, 5))
    finally:
        for actor in pool.actors:
            ray.kill(actor)
        ray.kill(aggregator)


# --------------------------------------------------------------------------- real runs
#
# One secure run with faults in every round and the plain run that must equal it: the plain
# run loses, at training, exactly the clients whose inputs the secure run leaves out.
#
#   round 0: client 3 fails before masking (left out), client 7 after (recovered)
#   round 1: 5 of 10 masked inputs never arrive (t = 6): abort at the mask step
#   round 2: 5 of 10 survivors never answer the unmask request: abort at the unmask step
#   round 3: client 5's runner process dies after masking: all its clients are recovered
SECURE_FAULTS = (
    [(0, 3, "mask", False), (0, 7, "unmask", False)]
    + [(1, k, "mask", False) for k in range(5)]
    + [(2, k, "unmask", False) for k in range(5, 10)]
    + [(3, 5, "unmask", True)]
)
PLAIN_FAULTS = [(0, 3, "train", False)] + [
    (t, k, "train", False) for t in (1, 2) for k in range(10)
]


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secagg-runs")
    secure = _run(tmp / "secure", "federation.rounds=4", "ray.runners=3", faults=SECURE_FAULTS)
    plain = _run(
        tmp / "plain",
        "secagg.enabled=false",
        "federation.rounds=4",
        "ledger.enabled=false",  # the same clients every round: sampling needs no beacon
        "ray.runners=2",
        "ray.runner_num_cpus=1",
        faults=PLAIN_FAULTS,
    )
    return secure, plain


def test_secure_run_equals_plain_run_up_to_fixed_point(runs):
    secure, plain = runs
    _assert_fixed_point_close(secure, plain, [9, 10, 10, 10])
    assert secure.metrics["test_accuracy"][-1] > 0.5


def test_dropouts_after_masking_are_recovered_and_before_masking_left_out(runs):
    secure, _ = runs
    m = secure.metrics
    assert m["secagg_failed"][0] == m["secagg_failed"][3] == 0.0
    assert m["secagg_included"][0] == 9.0 and m["secagg_included"][3] == 10.0
    assert m["secagg_dropped"][0] == 1.0 and m["secagg_dropped"][3] == 0.0
    assert m["secagg_recovered"][0] == 1.0
    assert 3.0 <= m["secagg_recovered"][3] <= 4.0  # the dead runner's clients (3 runners)
    first = secure.rounds[0]["failures"]
    assert [f["client_id"] for f in first] == [3]
    assert "mask" in first[0]["reason"] and "injected fault" in first[0]["reason"]
    assert secure.rounds[3]["failures"] == []  # recovered clients' updates were used
    assert m["secagg_threshold"] == [float(THRESHOLD)] * 4
    assert all(s > 0 for s in m["secagg_seconds"])


def test_too_few_survivors_fail_the_round_cleanly_and_leave_the_model(runs):
    secure, _ = runs
    m = secure.metrics
    assert m["secagg_failed"] == [0.0, 1.0, 1.0, 0.0]
    assert m["secagg_included"][1:3] == [0.0, 0.0]
    assert np.array_equal(secure.weights[2], secure.weights[1])  # never a wrong sum
    assert np.array_equal(secure.weights[3], secure.weights[1])
    for index, stage, injected in ((1, "mask", range(5)), (2, "unmask", range(5, 10))):
        failures = secure.rounds[index]["failures"]
        assert [f["client_id"] for f in failures] == list(range(10))
        assert all("injected fault" in failures[k]["reason"] for k in injected)
        aborted = [f for f in failures if f["client_id"] not in injected]
        assert all(f"aborted at {stage}" in f["reason"] for f in aborted)
        assert all("model unchanged" in f["reason"] for f in aborted)
        assert secure.rounds[index]["extra"]["secagg_failed"] == 1.0


def test_secure_rounds_take_the_kem_keys_the_ledgers_genesis_registers(runs):
    secure, plain = runs
    assert (secure.key_source, plain.key_source) == ("ledger", None)
    with open_readonly(secure.ledger) as store:
        (genesis,) = next(iter(store.blocks())).transactions
    master = master_secret_from_run_seed(0)  # configs/secagg.yaml's seed
    assert dict(genesis.kem_keys) == {k: kem_public_key(master, k) for k in range(CLIENTS)}


def test_round_close_on_the_ledger_records_aborted_secure_rounds(runs):
    secure, _ = runs
    with open_readonly(secure.ledger) as store:
        closes = [tx for b in store.blocks() for tx in b.transactions if tx.kind == "round_close"]
    assert [c.round for c in closes] == [0, 1, 2, 3]
    micro = 1_000_000  # RoundClose metrics are integers in micro-units
    assert [c.metrics["secagg_failed"] for c in closes] == [0, micro, micro, 0]
    assert [c.metrics["secagg_included"] for c in closes] == [9 * micro, 0, 0, 10 * micro]
    assert {c.metrics["secagg_threshold"] for c in closes} == {THRESHOLD * micro}
    assert not any("seconds" in key for c in closes for key in c.metrics)


def test_ledger_records_each_signed_masked_input_and_runners_drop_their_state(runs):
    secure, _ = runs
    # what arrived masked was signed and admitted, even in a round that then aborted
    assert secure.metrics["accepted_updates"] == [9.0, 5.0, 10.0, 10.0]
    assert secure.metrics["rejected_updates"] == [0.0] * 4
    assert cli_main(["ledger", "verify", str(secure.ledger)]) == 0
    assert secure.sessions == [0, 0]  # two runners left; neither keeps any client's state


@pytest.mark.slow
@pytest.mark.usefixtures("ray_local")
def test_secure_run_with_central_dp_equals_plain_central_dp(tmp_path):
    dp = [
        "privacy.mode=central",
        "privacy.clip=0.5",
        "privacy.noise_multiplier=0.5",
        "federation.rounds=2",
        "ledger.enabled=false",
        "ray.runners=2",
        "ray.runner_num_cpus=1",
    ]
    plain = _run(tmp_path / "plain", *dp, "secagg.enabled=false")
    secure = _run(tmp_path / "secure", *dp)
    # the same server noise (its generator is seeded per round) on the same clipped sum
    _assert_fixed_point_close(secure, plain, [CLIENTS, CLIENTS])
    assert secure.metrics["dp_epsilon"] == plain.metrics["dp_epsilon"]
    assert secure.metrics["secagg_included"] == [10.0, 10.0]
