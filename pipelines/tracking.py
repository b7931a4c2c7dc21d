"""MLflow tracking: one run per experiment, one metrics batch per round.

Uses `MlflowClient` with an explicit run id (no fluent, process-global active
run), so several runs can be tracked from one process and nothing leaks
between them. Round metrics are logged with MLflow's asynchronous logging
(`log_batch(synchronous=False)`), so a round does not wait for the tracking
store; `flush()` waits for every pending batch and raises the first failure,
and `end()` flushes before it marks the run terminated.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

from qfl.errors import RunError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
_MAX_PARAMS_PER_BATCH = 100


def resolve_tracking_uri(flag: str | None, env: str | None, configured: str | None) -> str:
    """Precedence: --tracking-uri, then MLFLOW_TRACKING_URI, then the config, then ./mlflow.db."""
    for candidate in (flag, env, configured):
        if candidate:
            return candidate
    return DEFAULT_TRACKING_URI


def git_commit(cwd: Path | None = None) -> str | None:
    """The current git commit of `cwd`, or None outside a repository."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class Tracker:
    """One MLflow run: params, per-round metrics, artifacts, final status."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._pending: list[RunOperations] = []

    @classmethod
    def start(
        cls, uri: str, experiment: str, run_name: str | None, tags: Mapping[str, str]
    ) -> Tracker:
        """Create (or reuse) `experiment` at `uri` and open a new run in it."""
        try:
            client = MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, experiment)
            run = client.create_run(experiment_id, run_name=run_name, tags=dict(tags))
        except (MlflowException, OSError) as exc:
            raise RunError(f"cannot open an MLflow run at {uri!r}: {exc}") from exc
        return cls(client, run.info.run_id, experiment_id)

    @classmethod
    def resume(cls, uri: str, run_id: str) -> Tracker:
        """Reopen run `run_id` at `uri` (a killed or failed run) and mark it running."""
        try:
            client = MlflowClient(tracking_uri=uri)
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
        except (MlflowException, OSError) as exc:
            raise RunError(f"cannot reopen MLflow run {run_id!r} at {uri!r}: {exc}") from exc
        return cls(client, run_id, run.info.experiment_id)

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric `key` has a value in this run."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    @property
    def artifact_uri(self) -> str:
        return self.client.get_run(self.run_id).info.artifact_uri

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def log_metrics(
        self, step: int, metrics: Mapping[str, float], timestamp_ms: int, *, wait: bool = False
    ) -> None:
        """Log one step's metrics in the background (`wait=True`: before returning)."""
        batch = [Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()]
        operation = self.client.log_batch(self.run_id, metrics=batch, synchronous=False)
        if operation is not None:
            self._pending.append(operation)
        if wait:
            self.flush()

    def flush(self) -> None:
        """Wait until every metric logged so far is in the tracking store."""
        pending, self._pending = self._pending, []
        try:
            for operation in pending:
                operation.wait()
        except MlflowException as exc:
            raise RunError(f"MLflow could not record metrics of run {self.run_id}: {exc}") from exc

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def end(self, status: str = "FINISHED") -> None:
        """Flush pending metrics, then mark the run terminated with `status` (FAILED if lost)."""
        try:
            self.flush()
        except RunError:
            self.client.set_terminated(self.run_id, status="FAILED")
            raise
        self.client.set_terminated(self.run_id, status=status)


def _experiment_id(client: MlflowClient, name: str) -> str:
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created concurrently by another run
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id
