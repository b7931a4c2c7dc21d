"""The whole experiment as one frozen, validated object.

A run is one YAML file plus command-line overrides (`--set section.key=value`).
Everything is checked here, before Ray starts, an MLflow run opens or a folder
is created: an unknown key, a wrong type, an out-of-range value, a missing file
or malformed YAML raises `ConfigError` with the file and the dotted field path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from federated.aggregate import AggregationConfig
from federated.attacks import AttackConfig, num_attackers
from federated.config import ModelConfig, TrainConfig
from federated.crosscheck import CrossCheckConfig
from federated.data import DATASETS, PARTITIONS
from federated.energy import EnergyConfig
from federated.network import NetworkConfig
from federated.privacy import PrivacyConfig
from federated.secagg import SecAggConfig, check_secagg_config
from ledger.keeper import LedgerConfig
from ledger.keys import master_secret_from_env
from pipelines.scheduler import ClientsConfig, SchedulerConfig
from qfl.errors import ConfigError
from quantum.config import QuantumConfig
from quantum.monitor import MonitorConfig
from quantum.resources import ResourceConfig, unique_resources


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataConfig(_Section):
    """Dataset, its split and how it is partitioned among clients."""

    dataset: Literal[DATASETS] = "digits"  # type: ignore[valid-type]
    root: Path | None = Field(None, description="folder with local MNIST/CIFAR-10 files")
    test_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    partition: Literal[PARTITIONS] = "iid"  # type: ignore[valid-type]
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration (partition=dirichlet)")
    shards_per_client: int = Field(2, ge=1)
    standardize: bool = True
    classes: tuple[int, ...] | None = Field(None, description="keep these labels only, e.g. [0, 1]")
    pca_components: int | None = Field(None, ge=1, description="reduce features by PCA (train)")

    @model_validator(mode="after")
    def _root_for_file_datasets(self) -> DataConfig:
        if self.dataset in ("mnist", "cifar10") and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} reads local files: set data.root")
        return self


FEATURES = {
    "digits": 64,
    "breast_cancer": 30,
    "iris": 4,
    "wine": 13,
    "mnist": 784,
    "cifar10": 3072,
}


class FederationConfig(_Section):
    """Clients, rounds, sampling and the aggregation rule."""

    clients: int = Field(8, ge=1)
    rounds: int = Field(10, ge=1)
    clients_per_round: int | None = Field(None, ge=1, description="sample this many per round")
    sample_fraction: float = Field(1.0, gt=0.0, le=1.0, description="or this fraction")
    strategy: Literal["fedavg", "fedprox"] = Field(
        "fedavg", description="local objective: fedprox adds (mu/2)||w - w_t||^2"
    )
    prox_mu: float = Field(0.0, ge=0.0, description="FedProx proximal weight mu")
    train_loss: bool = Field(
        False,
        description="also log train_loss each round: F(w_t), the global model's mean loss "
        "over every client's training data (the objective of Eq. 8), by exact evaluation",
    )

    @model_validator(mode="after")
    def _consistent(self) -> FederationConfig:
        if self.clients_per_round is not None:
            if self.sample_fraction != 1.0:
                raise ValueError("set clients_per_round or sample_fraction, not both")
            if self.clients_per_round > self.clients:
                raise ValueError(
                    f"clients_per_round={self.clients_per_round} exceeds clients={self.clients}"
                )
        if self.strategy == "fedprox" and self.prox_mu <= 0.0:
            raise ValueError("strategy fedprox needs prox_mu > 0")
        return self

    @property
    def per_round(self) -> int:
        """Clients sampled each round: clients_per_round, else floor(fraction x clients), >= 1."""
        if self.clients_per_round is not None:
            return self.clients_per_round
        return max(1, math.floor(self.sample_fraction * self.clients + 1e-9))


class RayConfig(_Section):
    """Where and how wide the run executes."""

    address: str | None = Field(None, description="None: local ray.init; 'auto' or ray://...")
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray (None: all)")
    runners: int = Field(2, ge=1, description="client-runner actors serving all virtual clients")
    runner_num_cpus: float = Field(1.0, gt=0.0)
    runner_num_gpus: float = Field(0.0, ge=0.0, description="GPUs per runner (exact executor)")
    torch_threads: int = Field(1, ge=1, description="torch intra-op threads per runner")
    round_timeout_s: float = Field(600.0, gt=0.0)


class TrackingConfig(_Section):
    """MLflow: where runs go and under which experiment."""

    uri: str | None = Field(None, description="None: MLFLOW_TRACKING_URI or sqlite:///mlflow.db")
    experiment: str = Field("qfl", min_length=1)
    run_name: str | None = None


class OutputConfig(_Section):
    """Local run folder (checkpoints, resolved config)."""

    runs_dir: Path = Path("runs")


class ExperimentConfig(_Section):
    """One experiment: every section above, plus the seed that makes it reproducible."""

    name: str = Field("experiment", min_length=1)
    seed: int = Field(0, ge=0, lt=2**32)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    federation: FederationConfig = FederationConfig()
    quantum: QuantumConfig | None = None
    aggregation: AggregationConfig = AggregationConfig()
    attack: AttackConfig = AttackConfig()
    resources: tuple[ResourceConfig, ...] = Field(
        (), description="quantum resources (devices or noisy stand-ins) clients bind to"
    )
    clients: ClientsConfig | None = Field(
        None, description="client kinds (classical, quantum_enhanced, hybrid); None: classical"
    )
    scheduler: SchedulerConfig = SchedulerConfig()
    monitor: MonitorConfig = MonitorConfig()
    crosscheck: CrossCheckConfig | None = Field(
        None, description="hybrid verification of quantum updates against exact simulation"
    )
    privacy: PrivacyConfig = PrivacyConfig()
    secagg: SecAggConfig = SecAggConfig()
    network: NetworkConfig = Field(
        NetworkConfig(), description="simulated links, compute speeds, round deadline (off)"
    )
    energy: EnergyConfig = Field(EnergyConfig(), description="energy and CO2 per round (on)")
    ledger: LedgerConfig = LedgerConfig()
    ray: RayConfig = RayConfig()
    tracking: TrackingConfig = TrackingConfig()
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _model_fits_data(self) -> ExperimentConfig:
        kind, dataset = self.model.kind, self.data.dataset
        if kind == "cnn" and dataset not in ("mnist", "cifar10"):
            raise ValueError(f"model.kind cnn needs an image dataset, not {dataset!r}")
        if kind == "cnn" and self.data.pca_components is not None:
            raise ValueError("model.kind cnn needs images: remove data.pca_components")
        if kind in ("hybrid", "vqc") and self.quantum is None:
            raise ValueError(f"model.kind {kind} needs a quantum section (quantum.qubits, ...)")
        if kind == "vqc":
            features = self.data.pca_components or FEATURES[dataset]
            if features != self.quantum.qubits:
                raise ValueError(
                    f"vqc encodes one feature per qubit: {dataset} gives {features} features "
                    f"but quantum.qubits={self.quantum.qubits} (set data.pca_components)"
                )
        return self

    @model_validator(mode="after")
    def _aggregation_fits(self) -> ExperimentConfig:
        per_round, needed = self.federation.per_round, self.aggregation.min_updates
        if per_round < needed:
            raise ValueError(
                f"aggregation.rule {self.aggregation.rule} needs at least {needed} updates a "
                f"round, but {per_round} clients are sampled"
            )
        if self.privacy.enabled and self.aggregation.rule not in ("fedavg", "fedprox"):
            raise ValueError(
                f"privacy.mode {self.privacy.mode} aggregates by DP-FedAvg (clipped mean plus "
                f"Gaussian noise): set aggregation.rule fedavg, not {self.aggregation.rule!r}"
            )
        if (
            self.attack.kind != "none"
            and num_attackers(self.federation.clients, self.attack.fraction) < 1
        ):
            raise ValueError(
                f"attack.fraction={self.attack.fraction} of {self.federation.clients} clients "
                "is no attacker: raise the fraction"
            )
        return self

    @model_validator(mode="after")
    def _secagg_fits(self) -> ExperimentConfig:
        """Secure aggregation reveals only the sum: the rule, clipping and bounds must work on it.

        aggregation.clip_norm and ledger.norm_bound are rejected (the server and the keeper
        see masked inputs only); privacy.clip (central DP) is how clients bound updates.
        """
        if not self.secagg.enabled:
            return self
        bound = self.ledger.norm_bound if self.ledger.enabled else None
        try:
            check_secagg_config(
                self.secagg,
                clients_per_round=self.federation.per_round,
                rule=self.aggregation.rule,
                clip=self.privacy.clip if self.privacy.enabled else None,
                clip_norm=self.aggregation.clip_norm,
                norm_bound=bound,
            )
        except ConfigError as exc:
            raise ValueError(f"secagg.enabled: {exc}") from exc
        return self

    @model_validator(mode="after")
    def _orchestration_fits(self) -> ExperimentConfig:
        names = list(unique_resources(self.resources))
        if self.clients is None:
            if self.resources:
                raise ValueError("resources are configured but no clients section binds to them")
            return self
        self.clients.check(self.federation.clients, names)
        counts = self.clients.kind_counts(self.federation.clients)
        bound = counts["quantum_enhanced"] + counts["hybrid"]
        if bound and self.model.kind not in ("hybrid", "vqc"):
            raise ValueError(
                f"{bound} quantum-enhanced/hybrid clients need model.kind hybrid or vqc, "
                f"not {self.model.kind!r}"
            )
        if self.quantum is not None:
            for resource in self.resources:
                resource.check_fits(self.quantum.qubits)
        return self

    @model_validator(mode="after")
    def _energy_fits(self) -> ExperimentConfig:
        names = {r.name for r in self.resources}
        for name in self.energy.resource_joules_per_shot:
            if name not in names:
                raise ValueError(
                    f"energy.resource_joules_per_shot: {name!r} is not a configured resource "
                    f"(resources: {sorted(names) or 'none'})"
                )
        return self

    def flat(self) -> dict[str, str]:
        """Dotted-key view of the resolved config, e.g. {'federation.rounds': '10'}."""
        return dict(_flatten(self.model_dump(mode="json")))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:  # an empty mapping is one leaf, '{}'
            yield from _flatten(value, f"{path}.")
        else:
            yield path, "null" if value is None else str(value)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `section.key=value` into its dotted path and a YAML-typed value."""
    key, sep, raw = text.partition("=")
    path = [part.strip() for part in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {exc}") from exc
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `--set` override written at its dotted path.

    A path part `name[i]` is item i of a list in the file, e.g.
    ``resources[0].availability.outages=[]``.
    """
    result = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            node = _child(node, part, f"--set {text!r}: {'.'.join(path[: i + 1])}")
        key, index = _indexed(path[-1])
        if index is None:
            node[key] = value
        else:
            _list_at(node, key, index, f"--set {text!r}: {'.'.join(path)}")[index] = value
    return result


_INDEXED = re.compile(r"^(?P<key>[^\[\]]+)\[(?P<index>\d+)\]$")


def _indexed(part: str) -> tuple[str, int | None]:
    match = _INDEXED.match(part)
    return (part, None) if match is None else (match["key"], int(match["index"]))


def _list_at(node: dict[str, Any], key: str, index: int, where: str) -> list:
    items = node.get(key)
    if not isinstance(items, list) or not 0 <= index < len(items):
        size = len(items) if isinstance(items, list) else "no"
        raise ConfigError(f"{where}: {key} has {size} items in the file")
    return items


def _child(node: dict[str, Any], part: str, where: str) -> dict[str, Any]:
    key, index = _indexed(part)
    child = node.setdefault(key, {}) if index is None else _list_at(node, key, index, where)[index]
    if not isinstance(child, dict):
        raise ConfigError(f"{where} is not a section")
    return child


def _deep_copy(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, or raise ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: malformed YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def validate(raw: Mapping[str, Any], source: str) -> ExperimentConfig:
    """Validate a raw mapping; errors name `source` and every bad dotted field path."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: `source: section.key: message (got value)`."""
    lines = [f"{source}: invalid config ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(err["loc"][:-1]))
            lines.append(f"  {loc}: unknown key (allowed here: {allowed})")
            continue
        quiet = err["type"] == "missing" or isinstance(err["input"], Mapping)
        got = "" if quiet else f" (got {err['input']!r})"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}{got}")
    return "\n".join(lines)


def _allowed_keys(section: tuple[str | int, ...]) -> list[str]:
    """Field names of the config section at dotted path `section`."""
    model: type[BaseModel] = ExperimentConfig
    for part in section:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def load_config(path: Path | str, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load, override and validate an experiment config; raise ConfigError on any problem."""
    path = Path(path)
    raw = read_yaml(path)
    try:
        raw = apply_overrides(raw, overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    config = validate(raw, str(path))
    root = config.data.root
    if root is not None and not root.is_dir():
        raise ConfigError(f"{path}: data.root: folder not found: {root}")
    return config


def with_ibm_token(config: ExperimentConfig, token: str | None) -> ExperimentConfig:
    """`config` with quantum.token set from the environment's token, if it has none."""
    quantum = config.quantum
    if quantum is None or quantum.executor != "ibm" or quantum.token is not None or not token:
        return config
    secret = SecretStr(token)
    return config.model_copy(update={"quantum": quantum.model_copy(update={"token": secret})})


def environment_master_secret(environ: Mapping[str, str]) -> bytes | None:
    """`QFL_MASTER_SECRET` (hex) as bytes, None where unset; ConfigError (exit 2) if bad."""
    try:
        return master_secret_from_env(environ)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML that `load_config` reads back to an equal object."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
