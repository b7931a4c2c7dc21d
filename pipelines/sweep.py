"""Parameter sweeps: a cartesian grid of config overrides, times seeds, as MLflow runs.

    qfl sweep CONFIG --grid train.lr=0.01,0.1 --grid quantum.shots=128,512 --seeds 3

Pure part (no Ray, no MLflow): `parse_grid` reads `--grid key=v1,v2` flags,
`expand_grid` lists the grid points in order (the last flag varies fastest),
`plan_sweep` resolves and validates every (point, seed) config before anything
runs. A value is YAML, as with `--set`; values are split at commas outside
brackets, so `--grid 'model.hidden=[64],[32,32]'` is two points and a value
cannot hold a comma otherwise.

Execution (`run_sweep`): each run is a Ray task that calls `run_experiment`
inside the cluster. A task holds a placement group of its run's client-runner
resources (`ray.runners` bundles of `ray.runner_num_cpus` CPUs and
`ray.runner_num_gpus` GPUs), and the actors it creates are placed in that group,
so a run starts only when all of its runners fit and sweeps never deadlock on
half-placed runs. At most `parallel` runs are in flight. A run that fails comes
back as a FAILED `SweepResult` with its error; the others go on.

Every run is tagged `sweep.id`, `sweep.point` (the point without the seed, e.g.
``train.lr=0.01,quantum.shots=128``), `sweep.<key>` per grid key (``[i]`` in a
key becomes ``.i``: MLflow tag names have no brackets) and `seed`.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from pipelines.config import ExperimentConfig, load_config, parse_override
from qfl.errors import ConfigError, RunError

# --------------------------------------------------------------------------- the grid


class GridAxis(BaseModel):
    """One `--grid key=v1,v2,...` flag: a dotted config key and its values (canonical YAML)."""

    model_config = ConfigDict(frozen=True)

    key: str
    values: tuple[str, ...] = Field(min_length=1)


class SweepPoint(BaseModel):
    """One grid point: a value for each grid key, in the order of the `--grid` flags."""

    model_config = ConfigDict(frozen=True)

    values: tuple[tuple[str, str], ...]  # ((key, canonical value), ...)

    @property
    def name(self) -> str:
        """The canonical point string, e.g. ``train.lr=0.01,quantum.shots=128`` (no seed)."""
        return ",".join(f"{key}={value}" for key, value in self.values)

    def overrides(self) -> list[str]:
        """The point as `--set` overrides."""
        return [f"{key}={value}" for key, value in self.values]

    def tags(self) -> dict[str, str]:
        """`sweep.point` and one `sweep.<key>` tag per grid key."""
        tags = {"sweep.point": self.name}
        for key, value in self.values:
            tags[f"sweep.{tag_key(key)}"] = value
        return tags


class SweepRun(BaseModel):
    """One run of a sweep: a grid point, its seed and its resolved, validated config."""

    model_config = ConfigDict(frozen=True)

    index: int  # position in the sweep, 0-based
    point: SweepPoint
    seed: int
    config: ExperimentConfig

    def tags(self, sweep_id: str) -> dict[str, str]:
        return {"sweep.id": sweep_id, **self.point.tags(), "seed": str(self.seed)}

    def cpus(self) -> float:
        """CPUs the run's client runners hold (its other actors take none)."""
        return self.config.ray.runners * self.config.ray.runner_num_cpus


class SweepResult(BaseModel):
    """How one run of a sweep ended."""

    model_config = ConfigDict(frozen=True)

    index: int
    point: str
    seed: int
    status: Literal["FINISHED", "FAILED"]
    run_id: str | None = None  # None: failed before its MLflow run opened
    final_accuracy: float | None = None
    wall_seconds: float = 0.0
    error: str | None = None


_INDEX = re.compile(r"\[(\d+)\]")


def tag_key(key: str) -> str:
    """A grid key as an MLflow tag name: ``resources[0].p`` -> ``resources.0.p``."""
    return _INDEX.sub(r".\1", key)


def split_values(raw: str) -> list[str]:
    """Split at commas outside brackets: ``[64],[32,32]`` -> ``["[64]", "[32,32]"]``."""
    parts, depth, current = [], 0, []
    for char in raw:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part.strip() for part in parts]


def canonical(value: object) -> str:
    """A YAML-typed value written back as one line of YAML: ``0.10`` -> ``0.1``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=2**30).strip()
    return text.removesuffix("...").strip()


def parse_grid(texts: Sequence[str]) -> tuple[GridAxis, ...]:
    """Parse `--grid key=v1,v2` flags; ConfigError on a malformed, repeated or empty one."""
    axes: list[GridAxis] = []
    for text in texts:
        name, sep, raw = text.partition("=")
        if not sep:
            raise ConfigError(f"--grid {text!r}: expected key=v1,v2,...")
        key = ".".join(parse_override(f"{name}=")[0])  # checks the dotted key
        if key.split(".")[0] == "tracking":
            raise ConfigError(
                f"--grid {text!r}: every run of a sweep goes to one MLflow experiment; "
                "use --experiment and --tracking-uri instead"
            )
        if any(axis.key == key for axis in axes):
            raise ConfigError(f"--grid {text!r}: {key} is already a grid key")
        values = []
        for part in split_values(raw):
            if not part:
                raise ConfigError(f"--grid {text!r}: empty value (expected key=v1,v2,...)")
            _, value = parse_override(f"{key}={part}")
            values.append(canonical(value))
        if len(set(values)) != len(values):
            raise ConfigError(f"--grid {text!r}: a value is repeated")
        axes.append(GridAxis(key=key, values=tuple(values)))
    return tuple(axes)


def expand_grid(axes: Sequence[GridAxis]) -> list[SweepPoint]:
    """The cartesian product of the axes, the last axis varying fastest (one point if none)."""
    combos = itertools.product(*(axis.values for axis in axes))
    keys = [axis.key for axis in axes]
    return [SweepPoint(values=tuple(zip(keys, combo, strict=True))) for combo in combos]


def plan_sweep(
    path: Path | str,
    overrides: Sequence[str],
    points: Sequence[SweepPoint],
    seeds: int,
    *,
    experiment: str | None = None,
    sweep_id: str = "",
) -> list[SweepRun]:
    """Every run of the sweep, its config resolved and validated; nothing has run yet.

    A run's config is the file, then `overrides` (`--set`), then the point; run i of a
    point has seed `config.seed + i`. All runs go to `experiment` (default: the first
    point's `tracking.experiment`), with a run name of point and seed, and with the
    local paths (`output.runs_dir`, `data.root`) made absolute so that a Ray worker
    finds them. One ConfigError lists every invalid point, naming it and the field.
    """
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least 1")
    runs: list[SweepRun] = []
    problems: list[str] = []
    for point in points:
        where = f"grid point {point.name!r}" if point.values else "config"
        try:
            base = load_config(path, [*overrides, *point.overrides()])
            configs = [
                load_config(path, [*overrides, *point.overrides(), f"seed={base.seed + i}"])
                for i in range(seeds)
            ]
        except ConfigError as exc:
            problems.append(f"{where}: {exc}")
            continue
        experiment = experiment or base.tracking.experiment
        for config in configs:
            name = f"{point.name} seed={config.seed}".strip()
            config = portable(config, experiment, f"{name} [{sweep_id}]" if sweep_id else name)
            runs.append(SweepRun(index=len(runs), point=point, seed=config.seed, config=config))
    if problems:
        raise ConfigError("\n".join(problems))
    return runs


def portable(config: ExperimentConfig, experiment: str, run_name: str) -> ExperimentConfig:
    """`config` for a run in another process: absolute paths, the sweep's experiment."""
    tracking = config.tracking.model_copy(update={"experiment": experiment, "run_name": run_name})
    output = config.output.model_copy(update={"runs_dir": config.output.runs_dir.resolve()})
    update = {"tracking": tracking, "output": output}
    if config.data.root is not None:
        update["data"] = config.data.model_copy(update={"root": config.data.root.resolve()})
    return config.model_copy(update=update)


def absolute_tracking_uri(uri: str) -> str:
    """A local tracking store as an absolute URI, so that Ray workers reach the same one.

    ``sqlite:///mlflow.db`` -> ``sqlite:////abs/mlflow.db``; a plain path or ``file:`` URI
    likewise; http(s), databricks and other servers unchanged.
    """
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if path and path != ":memory:" and not path.startswith("/"):
            return f"sqlite:///{Path(path).resolve()}"
        return uri
    if uri.startswith("file:"):
        return Path(uri.removeprefix("file://").removeprefix("file:")).resolve().as_uri()
    if uri.startswith("databricks"):  # a profile name, not a path
        return uri
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return str(Path(uri).resolve())
    return uri


def new_sweep_id() -> str:
    """One id per sweep invocation (not a random draw of any experiment)."""
    return uuid.uuid4().hex[:12]


def default_parallel(cluster_cpus: float, runs: Iterable[SweepRun]) -> int:
    """How many runs fit side by side: cluster CPUs // the largest run's CPUs, at least 1."""
    need = max((run.cpus() for run in runs), default=1.0)
    return max(1, int(cluster_cpus // need))


def failed(results: Iterable[SweepResult]) -> list[SweepResult]:
    return [r for r in results if r.status == "FAILED"]


# --------------------------------------------------------------------------- execution


class SweepObserver:
    """Hooks for progress display; the default does nothing."""

    def on_submit(self, run: SweepRun) -> None:  # noqa: B027
        pass

    def on_result(self, result: SweepResult) -> None:  # noqa: B027
        pass


def run_point(
    run: SweepRun,
    tracking_uri: str,
    config_source: str,
    sweep_id: str,
    master_secret: bytes | None = None,
) -> SweepResult:
    """Run one point to the end (inside a Ray worker); any exception becomes a FAILED result.

    `master_secret`: as `run_experiment`'s (each run mixes in its own seed)."""
    from pipelines.run import run_experiment

    tagger = _Tagger(tracking_uri, run.tags(sweep_id))
    start = time.perf_counter()
    try:
        summary = run_experiment(
            run.config,
            tracking_uri=tracking_uri,
            observer=tagger,
            config_source=config_source,
            master_secret=master_secret,
        )
    except Exception as exc:  # the sweep reports it and goes on with the other runs
        return SweepResult(
            index=run.index,
            point=run.point.name,
            seed=run.seed,
            status="FAILED",
            run_id=tagger.run_id or tagger.tag_by_name(run.config),
            wall_seconds=time.perf_counter() - start,
            error=f"{type(exc).__name__}: {exc}",
        )
    return SweepResult(
        index=run.index,
        point=run.point.name,
        seed=run.seed,
        status="FINISHED",
        run_id=summary.run_id,
        final_accuracy=summary.final_accuracy,
        wall_seconds=time.perf_counter() - start,
    )


class _Tagger:
    """A run observer that writes the sweep's tags on the run as soon as it opens."""

    def __init__(self, tracking_uri: str, tags: dict[str, str]):
        self.tracking_uri = tracking_uri
        self.tags = tags
        self.run_id: str | None = None

    def on_start(self, run_id: str, total_rounds: int) -> None:
        self.run_id = run_id
        self._write(run_id)

    def on_round(self, record) -> None:
        pass

    def tag_by_name(self, config: ExperimentConfig) -> str | None:
        """Tag a run that failed after it opened but before `on_start`; its id, if any."""
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        try:
            experiment = client.get_experiment_by_name(config.tracking.experiment)
            if experiment is None:
                return None
            name = config.tracking.run_name.replace("'", "\\'")
            found = client.search_runs(
                [experiment.experiment_id], f"attributes.run_name = '{name}'", max_results=1
            )
            if not found:
                return None
            self._write(found[0].info.run_id)
        except MlflowException:
            return None
        return found[0].info.run_id

    def _write(self, run_id: str) -> None:
        from mlflow.entities import RunTag
        from mlflow.tracking import MlflowClient

        tags = [RunTag(k, v) for k, v in self.tags.items()]
        MlflowClient(self.tracking_uri).log_batch(run_id, tags=tags)


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the sweep's experiment (and the tracking store) once, before any worker."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        existing = client.get_experiment_by_name(name)
        return existing.experiment_id if existing is not None else client.create_experiment(name)
    except (MlflowException, OSError) as exc:
        raise RunError(
            f"cannot open MLflow experiment {name!r} at {tracking_uri!r}: {exc}"
        ) from exc


def run_sweep(
    runs: Sequence[SweepRun],
    *,
    tracking_uri: str,
    config_source: str,
    sweep_id: str,
    parallel: int,
    observer: SweepObserver | None = None,
    poll_s: float = 0.5,
    master_secret: bytes | None = None,
) -> list[SweepResult]:
    """Run every run on the Ray this process is connected to, `parallel` at a time.

    `master_secret` goes to every run (`run_point`) through the object store.

    Each run is a task holding a placement group of its runners' resources; the actors
    it creates are placed in that group, and the group is removed when the task ends.
    Results come back in run order.
    """
    import ray
    from ray.exceptions import RayError
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    observer = observer or SweepObserver()
    task = ray.remote(num_cpus=0, max_retries=0, max_calls=1)(run_point)
    queue = list(reversed(runs))
    in_flight: dict[ray.ObjectRef, tuple[SweepRun, object]] = {}
    results: dict[int, SweepResult] = {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < parallel:
                run = queue.pop()
                group = placement_group(_bundles(run.config), strategy="PACK")
                strategy = PlacementGroupSchedulingStrategy(
                    group, placement_group_capture_child_tasks=True
                )
                ref = task.options(scheduling_strategy=strategy).remote(
                    run, tracking_uri, config_source, sweep_id, master_secret
                )
                in_flight[ref] = (run, group)
                observer.on_submit(run)
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=poll_s)
            for ref in ready:
                run, group = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                except RayError as exc:  # the worker died (out of memory, node lost, ...)
                    result = SweepResult(
                        index=run.index,
                        point=run.point.name,
                        seed=run.seed,
                        status="FAILED",
                        error=f"{type(exc).__name__}: {exc}",
                    )
                remove_placement_group(group)
                results[run.index] = result
                observer.on_result(result)
    finally:
        for ref, (_, group) in in_flight.items():  # interrupted: stop what still runs
            ray.cancel(ref, force=True)
            remove_placement_group(group)
    return [results[run.index] for run in runs]


def _bundles(config: ExperimentConfig) -> list[dict[str, float]]:
    """One bundle per client runner: its CPUs and GPUs."""
    bundle = {"CPU": config.ray.runner_num_cpus}
    if config.ray.runner_num_gpus > 0:
        bundle["GPU"] = config.ray.runner_num_gpus
    return [dict(bundle) for _ in range(config.ray.runners)]


def check_fits(runs: Sequence[SweepRun], cluster: dict[str, float]) -> None:
    """ConfigError for a run whose runners need more CPUs or GPUs than the whole cluster."""
    for run in runs:
        ray_config = run.config.ray
        need = {"CPU": run.cpus(), "GPU": ray_config.runners * ray_config.runner_num_gpus}
        for resource, amount in need.items():
            if amount > cluster.get(resource, 0.0) + 1e-9:
                raise ConfigError(
                    f"grid point {run.point.name!r}: its {ray_config.runners} runners need "
                    f"{amount:g} {resource}s but the Ray cluster has "
                    f"{cluster.get(resource, 0.0):g} (ray.runners, ray.runner_num_"
                    f"{resource.lower()}s)"
                )
