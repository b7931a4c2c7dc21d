"""The round loop: sample, dispatch, validate, aggregate, evaluate, record, checkpoint.

One round, as data (DESIGN.md): the driver holds w_t; the ledger keeper
certifies a RoundOpen block whose randomness beacon samples the clients; the
driver puts w_t in the object store once; the client pool trains and signs
the sampled clients' updates on its runner actors; the keeper's contract
admits or rejects each update; the aggregator actor combines the accepted
ones into w_{t+1}; the driver evaluates w_{t+1} on the held-out test set; the
keeper certifies the round's updates, rejections and RoundClose; the driver
logs the round to MLflow and writes a checkpoint to runs/<run_id>/.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict
from ray.exceptions import GetTimeoutError, RayError

from actors.aggregator import AggregatorActor
from actors.ledger_keeper import LedgerKeeperActor
from actors.monitor import MonitorActor
from actors.pool import ClientPool, RoundResult
from federated.aggregate import PrivateStep
from federated.attacks import select_attackers
from federated.client import LocalPrivacy
from federated.data import ArrayDataset, FederatedData, build_federated_data, pooled_client_data
from federated.messages import ClientTask, TrainedBatch
from federated.models import build_model, get_flat, quantum_param_mask, set_flat, weights_hash
from federated.privacy import PrivacyAccountant, noise_rng, resolve_noise_multiplier, sample_rate
from federated.sampling import client_seed, round_rng, sample_clients
from federated.train import evaluate
from ledger.keeper import RoundClosed, RoundPlan, SigningSpec, placement_for
from ledger.keys import run_master_secret
from ledger.records import Fallback
from ledger.store import head_height as ledger_head_height
from pipelines.checkpoint import (
    Checkpoint,
    append_round,
    load_checkpoint,
    promote_checkpoint,
    save_checkpoint,
    save_pending,
    truncate_rounds,
)
from pipelines.conditions import RoundConditions
from pipelines.config import ExperimentConfig, RayConfig, dump_config
from pipelines.orchestration import Orchestrator, advantage_metrics, exact_quantum
from pipelines.plots import convergence_plot
from pipelines.scheduler import SchedulePlan
from pipelines.secure_round import secagg_ledger_metrics, start_secure_round
from pipelines.tracking import Tracker, git_commit
from qfl.errors import RunError
from quantum.monitor import MonitorSnapshot


class RoundRecord(BaseModel):
    """Everything measured in one round; `metrics()` is what MLflow gets."""

    model_config = ConfigDict(frozen=True)

    round: int  # 1-based: the number of rounds completed
    test_accuracy: float
    test_loss: float
    mean_client_loss: float
    participants: int
    failed: int
    bytes_down: int
    bytes_up: int
    seconds: float
    accepted: int = 0
    rejected: int = 0
    ledger_height: int = -1  # -1: no ledger
    sign_seconds: float = 0.0  # summed over the round's clients
    verify_seconds: float = 0.0  # the contract's checks of the round's updates
    extra: dict[str, float] = {}  # orchestration: paths, per-kind loss, resources, plan
    train_loss: float | None = None  # F(w_t) on the clients' data (federation.train_loss)

    def metrics(self) -> dict[str, float]:
        objective = {} if self.train_loss is None else {"train_loss": self.train_loss}
        return (
            self.extra
            | objective
            | {
                "accepted_updates": self.accepted,
                "rejected_updates": self.rejected,
                "ledger_height": self.ledger_height,
                "sign_seconds": self.sign_seconds,
                "verify_seconds": self.verify_seconds,
                "test_accuracy": self.test_accuracy,
                "test_loss": self.test_loss,
                "mean_client_loss": self.mean_client_loss,
                "participants": self.participants,
                "failed_clients": self.failed,
                "bytes_down": self.bytes_down,
                "bytes_up": self.bytes_up,
                "round_seconds": self.seconds,
            }
        )


class LedgerRound(BaseModel):
    """The ledger's share of a round."""

    accepted: int = 0
    rejected: int = 0
    sign_seconds: float = 0.0
    verify_seconds: float = 0.0


class RunSummary(BaseModel):
    """How a run ended and where to find it."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    experiment: str
    tracking_uri: str
    artifact_uri: str
    run_dir: Path
    rounds: int
    final_accuracy: float
    final_loss: float
    wall_seconds: float
    weights_hash: str
    ledger_path: Path | None = None
    ledger_head: str | None = None  # hex SHA3-256 of the head block; anchor for verify --head


class RunObserver:
    """Hooks for progress display; the default does nothing."""

    def on_start(self, run_id: str, total_rounds: int) -> None:  # noqa: B027
        pass

    def on_round(self, record: RoundRecord) -> None:  # noqa: B027
        pass


@contextlib.contextmanager
def ray_session(config: RayConfig, env_address: str | None = None) -> Iterator[None]:
    """Use the Ray already initialised in this process, or start/connect and stop after.

    `env_address` is RAY_ADDRESS, which Ray sets for a `ray job submit` driver: a run
    without `--address` then joins that cluster instead of starting a local Ray.
    """
    if ray.is_initialized():
        yield
        return
    address = config.address or env_address
    try:
        if address is None:
            ray.init(num_cpus=config.num_cpus, include_dashboard=False, logging_level="WARNING")
        else:
            ray.init(address=address, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError, RayError) as exc:
        where = address or "a local Ray"
        raise RunError(f"cannot start or reach {where}: {exc}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def experiment_data(config: ExperimentConfig) -> FederatedData:
    """The run's clients' data and the held-out test set, as its `data` section says."""
    d = config.data
    return build_federated_data(
        d.dataset,
        n_clients=config.federation.clients,
        partition=d.partition,
        seed=config.seed,
        root=d.root,
        test_fraction=d.test_fraction,
        alpha=d.alpha,
        shards_per_client=d.shards_per_client,
        standardize_features=d.standardize,
        classes=d.classes,
        pca_components=d.pca_components,
    )


def run_experiment(
    config: ExperimentConfig,
    *,
    tracking_uri: str,
    observer: RunObserver | None = None,
    config_source: str = "",
    resume: str | None = None,
    master_secret: bytes | None = None,
) -> RunSummary:
    """Run `config` end to end and return its summary; the MLflow run ends FAILED on error.

    `master_secret` (>= 32 bytes; the CLI reads `QFL_MASTER_SECRET`) derives every
    signing key, ML-KEM key and noise seed of the run. Without one they derive from the
    run seed: reproducible, but anyone with the config can forge the run's signatures
    (tag `qfl.master_secret`: `run-seed` or `given`). A resume needs the same secret.

    `resume` names a run (its MLflow run id, also its folder under `output.runs_dir`)
    that stopped early: it continues from its last committed round, in the same MLflow
    run, the same ledger and the same folder, and with the same config (checked).
    """
    observer = observer or RunObserver()
    data = experiment_data(config)
    if resume is not None:
        run_dir = _resumable_run_dir(config, resume)
        tracker = Tracker.resume(tracking_uri, resume)
    else:
        tags = {
            "seed": str(config.seed),
            "qfl.config_source": config_source,
            "qfl.master_secret": "run-seed" if master_secret is None else "given",
        }
        commit = git_commit()
        if commit:
            tags |= {"git_commit": commit, "mlflow.source.git.commit": commit}
        tracker = Tracker.start(
            tracking_uri, config.tracking.experiment, config.tracking.run_name, tags
        )
        run_dir = config.output.runs_dir / tracker.run_id
    try:
        if resume is None:
            run_dir.mkdir(parents=True, exist_ok=False)
            (run_dir / "config.yaml").write_text(dump_config(config), encoding="utf-8")
            tracker.log_params(config.flat())
            tracker.log_artifact(run_dir / "config.yaml")
        observer.on_start(tracker.run_id, config.federation.rounds)
        with ray_session(config.ray, os.environ.get("RAY_ADDRESS")):
            summary = _round_loop(
                config,
                data,
                tracker,
                run_dir,
                observer,
                resuming=resume is not None,
                master_secret=master_secret,
            )
    except KeyboardInterrupt:
        tracker.end("KILLED")
        raise
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return summary


class _RoundUpdates:
    """A round's updates as object-store parts, and the keeper's admission of each.

    A part is a runner's answer to a batch (a `TrainedBatch`, serialised once, by the
    runner), or one the driver puts when it had to filter the updates first.
    """

    def __init__(self, keeper: ray.actor.ActorHandle | None) -> None:
        self.keeper = keeper
        self.parts: list[ray.ObjectRef] = []
        self.admissions: list[ray.ObjectRef] = []
        self.streamed = False  # admitted part by part while the rest trained

    def add(self, part: ray.ObjectRef) -> None:
        self.parts.append(part)
        if self.keeper is not None:
            self.admissions.append(self.keeper.admit.remote(part))


class Federation:
    """The wired parts of a run (data, model, pool, aggregator, ledger) and one round step."""

    def __init__(
        self,
        config: ExperimentConfig,
        data: FederatedData,
        *,
        run_id: str = "",
        ledger_path: Path | None = None,
        resume: Checkpoint | None = None,
        master_secret: bytes | None = None,
    ):
        """`resume`: continue after the checkpoint's round (weights and driver state).
        `master_secret`: the secret the run's keys and noise seeds derive from, with the
        run seed (`ledger.keys.run_master_secret`; None: from the run seed alone)."""
        fed = config.federation
        self.config = config
        self.data = data
        self.model = build_model(
            config.model,
            data.input_shape,
            data.num_classes,
            seed=config.seed,
            quantum=config.quantum,
        )
        self.weights = get_flat(self.model)
        # F(w) = sum_k n_k / n F_k(w): the mean loss over the rows some client holds
        self.objective = pooled_client_data(data) if fed.train_loss else None
        self.master_secret = run_master_secret(config.seed, master_secret)
        self.privacy = self._start_privacy()
        self.orchestrator, self.monitor = self._start_orchestration()
        self.conditions = RoundConditions.from_config(  # simulated network, energy account
            config, None if resume is None else resume.state.get("conditions")
        )
        if resume is not None:
            self._restore(resume)
        self._snapshot: MonitorSnapshot | None = None  # the monitor's view of the next round
        self._plan: SchedulePlan | None = None  # the current round's plan
        self.keeper, signing = None, None
        self.validator_placement: str | None = None  # resolved by `_start_ledger`
        self._next_plan: RoundPlan | None = None  # the round the last closing block opened
        if config.ledger.enabled and ledger_path is not None:
            self.keeper, signing = self._start_ledger(run_id, ledger_path, resume is not None)
        self.crypto_backend = None if signing is None else signing.backend
        self._closing: ray.ObjectRef | None = None  # the closing block being certified
        self._deferred: Callable[[], None] | None = None  # the last round's commit
        self._uncertified = False  # a closing block begun and not yet sent to certify
        self._open_height = -1
        quantum = config.quantum
        if self.orchestrator is not None and quantum is not None:
            quantum = exact_quantum(quantum)  # the classical path simulates the layer exactly
        self.pool = ClientPool.from_data(
            data,
            config.model,
            config.train,
            quantum=quantum,
            signing=signing,
            runners=config.ray.runners,
            num_cpus=config.ray.runner_num_cpus,
            num_gpus=config.ray.runner_num_gpus,
            prox_mu=fed.prox_mu if fed.strategy == "fedprox" else 0.0,
            torch_threads=config.ray.torch_threads,
            attack=config.attack,
            attackers=select_attackers(fed.clients, config.attack, config.seed),
            crosscheck=config.crosscheck,
            quantum_timeout_s=config.scheduler.quantum_timeout_s,
            seed=config.seed,
            local_dp=self._local_privacy(),
        )
        self.aggregator = AggregatorActor.remote(
            config.aggregation, quantum_mask=quantum_param_mask(self.model)
        )
        self.secure = start_secure_round(  # None unless secagg.enabled
            config,
            self.pool,
            self.aggregator,
            master_secret=self.master_secret,
            backend=self.crypto_backend,
            num_params=self.weights.size,
            keeper=self.keeper,  # rosters take the clients' keys from its Genesis
        )
        if resume is not None and resume.arrays:
            optimizer = {k.removeprefix("optimizer."): v for k, v in resume.arrays.items()}
            self._get(self.aggregator.load_state.remote(resume.state["optimizer"] | optimizer))
        self.pool.wait_ready(timeout_s=config.ray.round_timeout_s)

    def _get(self, ref: ray.ObjectRef):
        """The value of a remote call, or RunError once `ray.round_timeout_s` has passed."""
        timeout = self.config.ray.round_timeout_s
        try:
            return ray.get(ref, timeout=timeout)
        except GetTimeoutError as exc:
            raise RunError(f"a remote call did not answer within {timeout}s: {exc}") from exc

    def checkpoint(self, round_: int) -> Checkpoint:
        """The committed state after `round_` rounds: weights, optimizer and driver state."""
        optimizer = {}  # FedAvg's plain server step keeps no state: no call needed
        if self.config.aggregation.server_optimizer != "none":
            optimizer = self._get(self.aggregator.state.remote())
        arrays = {f"optimizer.{k}": v for k, v in optimizer.items() if isinstance(v, np.ndarray)}
        state = {
            "optimizer": {k: v for k, v in optimizer.items() if not isinstance(v, np.ndarray)},
            "dp_steps": 0 if self.privacy is None else round_,
        }
        if self.orchestrator is not None:
            state["orchestrator"] = self.orchestrator.state()
            # the jobs' outcomes: the circuit breaker reads the last round's
            state["monitor"] = self._get(self.monitor.state.remote())
        state["conditions"] = self.conditions.state()
        return Checkpoint(round=round_, weights=self.weights, state=state, arrays=arrays)

    def _restore(self, checkpoint: Checkpoint) -> None:
        self.weights = checkpoint.weights.astype(np.float32)
        if self.privacy is not None:
            for _ in range(checkpoint.state.get("dp_steps", 0)):
                self.privacy.step()
        if self.orchestrator is not None and "orchestrator" in checkpoint.state:
            self.orchestrator.load_state(checkpoint.state["orchestrator"])
        if self.monitor is not None and "monitor" in checkpoint.state:
            self._get(self.monitor.load_state.remote(checkpoint.state["monitor"]))

    def _start_privacy(self) -> PrivacyAccountant | None:
        """The run's DP accountant with z resolved (calibrated for a target epsilon)."""
        config, fed = self.config, self.config.federation
        if not config.privacy.enabled:
            return None
        z = resolve_noise_multiplier(
            config.privacy,
            rounds=config.privacy.rounds or fed.rounds,
            clients_per_round=fed.per_round,
            n_clients=fed.clients,
        )
        rate = sample_rate(config.privacy, fed.per_round, fed.clients)
        return PrivacyAccountant(config.privacy, z, rate)

    def _local_privacy(self) -> LocalPrivacy | None:
        if self.privacy is None or self.config.privacy.mode != "local":
            return None
        return LocalPrivacy(
            config=self.config.privacy,
            noise_multiplier=self.privacy.noise_multiplier,
            master_secret=self.master_secret,
        )

    def _private_step(self, t: int, sampled: int) -> PrivateStep | None:
        if self.privacy is None:
            return None
        return PrivateStep(
            config=self.config.privacy,
            noise_multiplier=self.privacy.noise_multiplier,
            rng=noise_rng(self.master_secret, t),
            sampled=sampled,
        )

    def _start_orchestration(self):
        """The orchestrator and the resource monitor actor, when client kinds are configured."""
        config = self.config
        if config.clients is None:
            return None, None
        orchestrator = Orchestrator(
            seed=config.seed,
            n_clients=config.federation.clients,
            clients=config.clients,
            resources=config.resources,
            scheduler=config.scheduler,
            quantum=config.quantum,
            examples=[len(ix) for ix in self.data.client_indices],
            epochs=config.train.epochs,
            batch_size=config.train.batch_size,
        )
        monitor = MonitorActor.remote(list(orchestrator.resources), config.monitor)
        return orchestrator, monitor

    def _prepare(self, t: int) -> MonitorSnapshot:
        """Step the resources to round t, show the monitor, return its snapshot."""
        states = self.orchestrator.step_resources(t)
        self._snapshot = self._get(self.monitor.observe_and_snapshot.remote(*states))
        return self._snapshot

    def _start_ledger(self, run_id: str, path: Path, resume: bool = False):
        """Write genesis (keys from the master secret), or reopen a resumed run's ledger; return
        the keeper and the signing spec."""
        master = self.master_secret
        ledger = self.config.ledger
        ray_config = self.config.ray
        self.validator_placement = placement_for(
            ledger.validator_placement,
            cluster_cpus=ray.cluster_resources().get("CPU", 0.0),
            runner_cpus=ray_config.runners * ray_config.runner_num_cpus,
            validators=ledger.validators,
        )
        keeper = LedgerKeeperActor.remote(
            path,
            run_id=run_id,
            master_secret=master,
            n_clients=self.config.federation.clients,
            num_params=self.weights.size,
            config_bytes=dump_config(self.config).encode(),
            config=ledger.model_copy(update={"validator_placement": self.validator_placement}),
            seed=self.config.seed,
            resume=resume,
            register_kem_keys=self.config.secagg.enabled,  # Genesis.kem_keys for secagg
        )
        backend = self._get(keeper.backend.remote())
        if resume:
            self._next_plan = self._get(keeper.reopened.remote())
        deterministic = self.config.ledger.deterministic
        spec = SigningSpec(
            run_id=run_id, master_secret=master, backend=backend, deterministic=deterministic
        )
        return keeper, spec

    def sample(self, t: int) -> list[int]:
        """Round t's clients: from the ledger's beacon when there is a ledger, else the seed.

        With a ledger, round t was opened in round t-1's closing block; the first round
        (or the first after a resume) gets a RoundOpen block of its own.
        """
        fed = self.config.federation
        orchestrator = self.orchestrator
        if orchestrator is not None and (self._snapshot is None or self._snapshot.round != t):
            self._prepare(t)
        sample = None if orchestrator is None else orchestrator.sampler(t)
        if self.keeper is None:
            rng = round_rng(self.config.seed, t)
            sampled = (sample or sample_clients)(fed.clients, fed.per_round, rng)
        else:
            if self._next_plan is not None and self._next_plan.round == t:
                plan = self._next_plan
            else:
                assign = None if orchestrator is None else orchestrator.assigner(t, self._snapshot)
                opened = self.keeper.open_round.remote(
                    t, fed.clients, fed.per_round, sample=sample, assign=assign
                )
                plan = self._get(opened)
            self._open_height = plan.height
            sampled = list(plan.sampled)
        if orchestrator is not None:
            self._plan = orchestrator.plan(t, sampled, self._snapshot)
        return list(sampled)

    def tasks(self, t: int, clients: list[int]) -> list[ClientTask]:
        """Each client of round t with its derived local seed."""
        seed = self.config.seed
        if self.orchestrator is not None and self._plan is not None and self._plan.round == t:
            seeds = {k: client_seed(seed, t, k) for k in clients}
            return self.orchestrator.tasks(self._plan, seeds)
        return [ClientTask(client_id=k, round=t, seed=client_seed(seed, t, k)) for k in clients]

    def step(self, t: int, *, last: bool = False) -> tuple[RoundRecord, RoundResult]:
        """Run round t (0-based): sample, dispatch, validate, aggregate, evaluate, record."""
        round_start = time.perf_counter()
        tasks = self.tasks(t, self.sample(t))
        weights_ref = ray.put(self.weights)
        updates = _RoundUpdates(self.keeper)
        result = self._train(weights_ref, tasks, updates)
        times = {"time.train_s": time.perf_counter() - round_start}
        result = self.conditions.apply(t, self.weights.nbytes, result)  # stragglers: failures
        phase = time.perf_counter()
        ledger = LedgerRound(sign_seconds=sum(u.sign_seconds for u in result.updates))
        accepted_ids = self._admitted(result, updates, ledger)
        times["time.ledger_s"], phase = _since(phase)
        aggregation = self._aggregate(t, weights_ref, updates, accepted_ids, result, len(tasks))
        times["time.aggregate_s"], phase = _since(phase)
        ledger.accepted = sum(u.client_id in accepted_ids for u in result.updates)
        record = _record(
            t + 1,
            self.model,
            self.weights,
            self.data,
            result,
            len(tasks),
            round_start,
            ledger,
            self.objective,
        )
        times["time.eval_s"], phase = _since(phase)
        fallbacks, extra = (), aggregation | _quantum_work(result.updates)
        extra |= self.conditions.metrics()  # net.* and energy.* (server time up to here)
        if self.orchestrator is not None:
            fallbacks, orchestration = self._after_round(t, result, accepted_ids, last)
            extra = extra | orchestration
        phase = time.perf_counter()
        if self.keeper is not None:
            height = self._begin_close(t, record, aggregation, fallbacks, last)
            record = record.model_copy(update={"ledger_height": height})
        times["time.ledger_s"] += time.perf_counter() - phase
        return record.model_copy(update={"extra": extra | times}), result

    def _train(
        self, weights_ref: ray.ObjectRef, tasks: list[ClientTask], updates: _RoundUpdates
    ) -> RoundResult:
        """Round t's local training; the previous round commits meanwhile (not secagg).

        The runners' answers stay in the store as the round's parts: the ledger keeper
        admits a part while the rest train (unless the simulated network may still drop
        a late update), and the aggregator averages the accepted ones from the same parts.
        """
        sizes = [len(self.data.client_indices[task.client_id]) for task in tasks]
        timeout = self.config.ray.round_timeout_s
        if self.secure is not None:  # masked inputs only; the stages run one after another
            self.commit()
            return self.secure.run_round(weights_ref, tasks, timeout, sizes)
        updates.streamed = self.keeper is not None and not self.conditions.drops_updates
        return self.pool.run_round(
            weights_ref,
            tasks,
            timeout,
            sizes,
            during=self.commit,
            on_part=updates.add if updates.streamed else None,
        )

    def _admitted(
        self, result: RoundResult, updates: _RoundUpdates, ledger: LedgerRound
    ) -> set[int]:
        """The clients whose updates the ledger's contract admitted (all, without a ledger).

        Parts not streamed are admitted now; updates filtered since they came (a
        secure round's, or without stragglers) go to the store as one new part, for the
        keeper and the aggregator (a secure round without a ledger aggregates its masked
        inputs itself)."""
        wanted = self.keeper is not None or self.secure is None
        if not updates.streamed and result.updates and wanted:
            parts = result.parts or [ray.put(TrainedBatch(updates=tuple(result.updates)))]
            for part in parts:
                updates.add(part)
        if not updates.admissions:
            return {u.client_id for u in result.updates}
        accepted: set[int] = set()
        for admitted_ids, rejections, seconds in self._get(updates.admissions):
            accepted.update(admitted_ids)
            ledger.rejected += len(rejections)
            ledger.verify_seconds += seconds
        return accepted

    def _aggregate(
        self,
        t: int,
        weights_ref: ray.ObjectRef,
        updates: _RoundUpdates,
        accepted: set[int],
        result: RoundResult,
        sampled: int,
    ) -> dict[str, float]:
        """New global weights from the accepted updates; the aggregation's metrics."""
        aggregation: dict[str, float] = {}
        if self.secure is not None:  # unmask the sum of the admitted masked inputs
            self.weights, aggregation = self.secure.aggregate(
                t, self.weights, accepted, result, self._private_step(t, sampled)
            )
        elif accepted:
            aggregated = self.aggregator.aggregate_with_info.remote(
                weights_ref,
                *updates.parts,
                accepted=accepted,
                reliability=self._reliability(accepted),
                private=self._private_step(t, sampled),
            )
            self.weights, info = self._get(aggregated)
            aggregation = info.metrics()
        if self.privacy is not None:
            self.privacy.step()  # the round released an aggregate: it spends budget
            aggregation |= self.privacy.metrics()
        return aggregation

    def _begin_close(
        self,
        t: int,
        record: RoundRecord,
        aggregation: dict[str, float],
        fallbacks: Sequence[Fallback],
        last: bool,
    ) -> int:
        """Fix round t's closing block; return its height.

        Its beacon and transactions are fixed now (unless this is the last round, it also
        opens round t+1: the plan is final); `certify` certifies it in the background
        while the next round trains, and `settle` (the round's commit) waits for it and
        surfaces its errors.
        """
        metrics = {"test_accuracy": record.test_accuracy, "test_loss": record.test_loss}
        metrics |= secagg_ledger_metrics(aggregation)  # secagg_failed, ... (if secagg)
        closed: RoundClosed = self._get(self._close(t, metrics, fallbacks, last))
        self._next_plan = closed.next
        self._uncertified = True
        return closed.height

    def _reliability(self, clients: set[int]) -> dict[int, float] | None:
        if self.orchestrator is None:
            return None
        return {k: self.orchestrator.reliability.reliability(k) for k in sorted(clients)}

    def _after_round(
        self, t: int, result: RoundResult, accepted: set[int], last: bool
    ) -> tuple[list[Fallback], dict[str, float]]:
        """Fallback records, reliability and gains, monitor reports; round t+1's snapshot."""
        orchestrator, plan = self.orchestrator, self._plan
        fallbacks = orchestrator.fallbacks(result.updates)
        outcomes = orchestrator.observe(plan, result.updates, accepted)
        extra = orchestrator.metrics(plan, result.updates) | advantage_metrics(plan)
        # the resources as this round saw them, with its jobs' outcomes
        extra |= self._get(self.monitor.report_and_metrics.remote(*outcomes))
        if not last:
            self._prepare(t + 1)
        return fallbacks, extra

    def _close(self, t: int, metrics: dict[str, float], fallbacks, last: bool) -> ray.ObjectRef:
        fed = self.config.federation
        following = None if last else (t + 1, fed.clients, fed.per_round)
        sample = assign = None
        if self.orchestrator is not None and not last:
            sample = self.orchestrator.sampler(t + 1)
            assign = self.orchestrator.assigner(t + 1, self._snapshot)
        return self.keeper.close_round.remote(
            t,
            self.weights,
            metrics,
            tuple(fallbacks),
            next_round=following,
            sample=sample,
            assign=assign,
            certify=False,
        )

    def certify(self) -> None:
        """Start certifying the closing block `step` began (in the background)."""
        if self._uncertified:
            self._uncertified = False
            self._closing = self.keeper.finish.remote()

    def settle(self) -> None:
        """Wait for the last closing block to be certified (raises its error, if any)."""
        self.certify()
        if self._closing is None:
            return
        closing, self._closing = self._closing, None
        self._get(closing)

    def defer(self, commit: Callable[[], None]) -> None:
        """Run `commit` (the last round's commit: `settle`, checkpoint, metrics) at the
        next `commit` call: while the next round trains, or at the end of the run."""
        self.commit()
        self._deferred = commit

    def commit(self) -> None:
        """Run the deferred commit, if any."""
        commit, self._deferred = self._deferred, None
        if commit is not None:
            commit()

    def close_ledger(self) -> tuple[int, bytes] | None:
        """Close the ledger file; returns its head (height, hash)."""
        self.commit()
        if self.keeper is None:
            return None
        self.settle()
        head = self._get(self.keeper.head.remote())
        self._get(self.keeper.close.remote())
        return head


def _resumable_run_dir(config: ExperimentConfig, run_id: str) -> Path:
    """The folder of run `run_id`, checked to hold a checkpoint of this very config."""
    run_dir = config.output.runs_dir / run_id
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise RunError(f"cannot resume {run_id!r}: no run folder with a config at {run_dir}")
    if saved.read_text(encoding="utf-8") != dump_config(config):
        raise RunError(
            f"cannot resume {run_id!r}: the config differs from the run's ({saved}); "
            "resume with the same file and --set overrides"
        )
    return run_dir


def _round_loop(
    config: ExperimentConfig,
    data: FederatedData,
    tracker: Tracker,
    run_dir: Path,
    observer: RunObserver,
    *,
    resuming: bool = False,
    master_secret: bytes | None = None,
) -> RunSummary:
    start = time.perf_counter()
    ledger_path = run_dir / "ledger.db"
    checkpoint, history = None, []
    if resuming:
        head = None
        if config.ledger.enabled and ledger_path.is_file():
            head = ledger_head_height(ledger_path)
        checkpoint = load_checkpoint(run_dir, head)
        history = _recover_history(run_dir, tracker, checkpoint.round)
    federation = Federation(
        config,
        data,
        run_id=tracker.run_id,
        ledger_path=ledger_path,
        resume=checkpoint,
        master_secret=master_secret,
    )
    if checkpoint is None:
        save_checkpoint(run_dir, federation.checkpoint(0))
    if federation.crypto_backend is not None:
        tracker.set_tags(
            {
                "ledger.crypto_backend": federation.crypto_backend,
                "ledger.validator_placement": federation.validator_placement,
            }
        )
    for t in range(len(history), config.federation.rounds):
        last = t == config.federation.rounds - 1
        record = run_round(federation, tracker, run_dir, t, last=last)
        history.append(record)
        observer.on_round(record)
    wall = time.perf_counter() - start
    head = federation.close_ledger()
    digest = _finish(config, tracker, run_dir, federation.model, federation.weights, history)
    head_hex = None if head is None else head[1].hex()
    if head is not None:
        tracker.set_tags({"ledger_head": head_hex, "ledger_height": str(head[0])})
        tracker.log_artifact(ledger_path)
    final = history[-1]
    return RunSummary(
        run_id=tracker.run_id,
        experiment=config.tracking.experiment,
        tracking_uri=tracker.client.tracking_uri,
        artifact_uri=tracker.artifact_uri,
        run_dir=run_dir,
        rounds=len(history),
        final_accuracy=final.test_accuracy,
        final_loss=final.test_loss,
        wall_seconds=wall,
        weights_hash=digest,
        ledger_path=ledger_path if head is not None else None,
        ledger_head=head_hex,
    )


def run_round(
    federation: Federation, tracker: Tracker, run_dir: Path, t: int, *, last: bool = False
) -> RoundRecord:
    """One round: step, rounds.jsonl; then its commit: ledger block, checkpoint, MLflow.

    The checkpoint is the commit point. The round's ledger block is certified before it
    and its MLflow metrics are logged after it, so a crash never leaves a committed round
    without its block, nor metrics of a round that did not commit (a resumed run logs
    the committed rounds' metrics that MLflow is missing from rounds.jsonl). The commit
    is deferred: it runs while the next round trains (`Federation.defer`), or now for the
    last round; `Federation.close_ledger` runs one still pending.
    """
    record, result = federation.step(t, last=last)
    checkpoint = federation.checkpoint(record.round)  # this round's state, saved at commit
    if federation.keeper is not None:  # on disk before its block can be stored
        save_pending(run_dir, checkpoint, record.ledger_height)
        federation.certify()
    failures = [f.model_dump() for f in result.failures]
    fallbacks = [
        {"client_id": u.client_id, "resource": u.resource, "reason": u.fallback_reason}
        for u in result.updates
        if u.path == "fallback"
    ]
    append_round(run_dir, {**record.model_dump(), "failures": failures, "fallbacks": fallbacks})

    def commit() -> None:
        metrics = record.metrics()
        if federation.keeper is not None:
            federation.settle()
            promote_checkpoint(run_dir)
            metrics["ledger.bytes"] = _file_bytes(run_dir / "ledger.db")
        else:
            save_checkpoint(run_dir, checkpoint)
        tracker.log_metrics(record.round, metrics, int(time.time() * 1000))

    federation.defer(commit)
    if last:
        federation.commit()
    return record


def _recover_history(run_dir: Path, tracker: Tracker, committed: int) -> list[RoundRecord]:
    """The committed rounds' records; MLflow gets any of their metrics it is missing."""
    records = [
        RoundRecord.model_validate(_record_fields(r)) for r in truncate_rounds(run_dir, committed)
    ]
    logged = tracker.logged_steps("test_accuracy")
    for record in records:
        if record.round not in logged:
            tracker.log_metrics(record.round, record.metrics(), int(time.time() * 1000))
    tracker.flush()
    return records


def _file_bytes(path: Path) -> float:
    """Bytes of an SQLite database with its write-ahead log (blocks not yet merged)."""
    wal = path.with_name(path.name + "-wal")
    return float(sum(p.stat().st_size for p in (path, wal) if p.exists()))


def _since(start: float) -> tuple[float, float]:
    """(seconds since `start`, now)."""
    now = time.perf_counter()
    return now - start, now


def _quantum_work(updates) -> dict[str, float]:
    """Circuits and shots the round's clients ran, and what error mitigation added."""
    totals = {
        "quantum.circuits": sum(u.circuits for u in updates),
        "quantum.shots": sum(u.shots for u in updates),
        "mitigation.extra_circuits": sum(u.extra_circuits for u in updates),
        "mitigation.extra_shots": sum(u.extra_shots for u in updates),
    }
    return {k: float(v) for k, v in totals.items()} if totals["quantum.circuits"] else {}


def _record_fields(line: dict) -> dict:
    return {k: v for k, v in line.items() if k in RoundRecord.model_fields}


def _record(
    round_: int,
    model: torch.nn.Module,
    weights: np.ndarray,
    data: FederatedData,
    result: RoundResult,
    sampled: int,
    round_start: float,
    ledger: LedgerRound,
    objective: ArrayDataset | None = None,
) -> RoundRecord:
    """The round's record; `objective` (the clients' pooled data): train_loss on it too."""
    set_flat(model, weights)
    evaluation = evaluate(model, data.test)
    losses = [u.loss for u in result.updates]
    return RoundRecord(
        round=round_,
        train_loss=None if objective is None else evaluate(model, objective).loss,
        test_accuracy=evaluation.accuracy,
        test_loss=evaluation.loss,
        mean_client_loss=float(np.mean(losses)) if losses else float("nan"),
        participants=len(result.updates),
        failed=len(result.failures),
        bytes_down=weights.nbytes * sampled,
        bytes_up=sum(u.nbytes for u in result.updates),
        seconds=time.perf_counter() - round_start,
        **ledger.model_dump(),
    )


def _finish(
    config: ExperimentConfig,
    tracker: Tracker,
    run_dir: Path,
    model: torch.nn.Module,
    weights: np.ndarray,
    history: list[RoundRecord],
) -> str:
    """Write and log the final model and the convergence plot; return the weights hash."""
    set_flat(model, weights)
    torch.save(model.state_dict(), run_dir / "model.pt")
    plot = convergence_plot(
        [r.round for r in history],
        [r.test_accuracy for r in history],
        [r.test_loss for r in history],
        run_dir / "convergence.png",
        title=config.name,
    )
    digest = weights_hash(weights)
    tracker.set_tags({"final_weights_sha256": digest})
    for path in (run_dir / "model.pt", plot, run_dir / "rounds.jsonl"):
        tracker.log_artifact(path)
    return digest
