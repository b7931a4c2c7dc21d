"""`qfl sweep CONFIG --grid key=v1,v2 [--grid ...] [--seeds N]`: a grid of runs on Ray.

Every (point, seed) config is validated before Ray starts (exit 2 naming the point and
the field); then the runs go to the Ray cluster, `--parallel` at a time, with one
progress bar over the sweep and a table of every run at the end. Exit 0 when every run
finished, 1 when any failed (each failure is listed with its error).
"""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.config import RayConfig, environment_master_secret, with_ibm_token
from pipelines.sweep import (
    SweepObserver,
    SweepResult,
    SweepRun,
    absolute_tracking_uri,
    check_fits,
    default_parallel,
    expand_grid,
    failed,
    new_sweep_id,
    parse_grid,
    plan_sweep,
)

EXIT_FAILED = 1


def add_sweep_parser(commands) -> argparse.ArgumentParser:
    """The `sweep` subcommand (its `--set` is added by the caller, as for `run`)."""
    sweep = commands.add_parser(
        "sweep",
        help="run a grid of configs (times seeds) as MLflow runs in one experiment",
        description="Grid values are YAML, split at commas outside brackets: "
        "--grid 'model.hidden=[64],[32,32]' is two points; a value cannot hold another comma.",
    )
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="SECTION.KEY=V1,V2",
        help="one grid axis (YAML values, as --set); repeatable: the cartesian product runs",
    )
    sweep.add_argument(
        "--seeds", type=_positive, default=1, help="runs per point, seeds config.seed + i"
    )
    sweep.add_argument("--experiment", help="MLflow experiment (default: tracking.experiment)")
    sweep.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
        "or the config's tracking.uri or sqlite:///mlflow.db)",
    )
    sweep.add_argument("--address", help="Ray address: 'auto' or ray://host:port (default: local)")
    sweep.add_argument(
        "--parallel",
        type=_positive,
        help="runs at a time (default: cluster CPUs // the CPUs a run's runners need)",
    )
    return sweep


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def run_sweep_command(args: argparse.Namespace, console: Console, errors: Console) -> int:
    """Plan and validate every run, then run them on Ray; ConfigError propagates (exit 2)."""
    sweep_id = new_sweep_id()
    points = expand_grid(parse_grid(args.grid))
    runs = plan_sweep(
        args.config,
        args.overrides,
        points,
        args.seeds,
        experiment=args.experiment,
        sweep_id=sweep_id,
    )
    secret = environment_master_secret(os.environ)
    token = os.environ.get("QISKIT_IBM_TOKEN")
    runs = [run.model_copy(update={"config": with_ibm_token(run.config, token)}) for run in runs]
    # Heavy imports (ray, torch, mlflow) only once every config is known to be good.
    import ray

    from pipelines.run import ray_session
    from pipelines.sweep import ensure_experiment, run_sweep
    from pipelines.tracking import resolve_tracking_uri

    first = runs[0].config
    uri = absolute_tracking_uri(
        resolve_tracking_uri(
            args.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), first.tracking.uri
        )
    )
    driver_ray: RayConfig = first.ray
    if args.address:
        driver_ray = driver_ray.model_copy(update={"address": args.address})
    with ray_session(driver_ray, os.environ.get("RAY_ADDRESS")):
        cluster = ray.cluster_resources()
        check_fits(runs, cluster)
        parallel = args.parallel or default_parallel(cluster.get("CPU", 1.0), runs)
        experiment = first.tracking.experiment
        ensure_experiment(uri, experiment)
        console.print(
            f"sweep {sweep_id}: {len(runs)} runs ({len(points)} points x {args.seeds} seeds) "
            f"in experiment {experiment!r} at {uri}, {parallel} at a time",
            highlight=False,
            soft_wrap=True,
        )
        with _SweepProgress(console, len(runs)) as progress:
            results = run_sweep(
                runs,
                tracking_uri=uri,
                config_source=args.config,
                sweep_id=sweep_id,
                parallel=parallel,
                observer=progress,
                master_secret=secret,
            )
    table = results_table(sweep_id, results)
    if not console.is_terminal:  # a log file or CI: wide enough that nothing folds
        console = Console(file=console.file, width=max(console.width, 160))
    console.print(table)
    bad = failed(results)
    for result in bad:
        errors.print(
            f"[bold red]run failed[/] {escape(result.point or '(base)')} seed {result.seed}: "
            f"{escape(result.error or '')}",
            highlight=False,
            soft_wrap=True,
        )
    return EXIT_FAILED if bad else 0


def results_table(sweep_id: str, results: list[SweepResult]) -> Table:
    """One row per run: point, seed, status, final test accuracy, wall time, MLflow run id."""
    table = Table(title=f"qfl sweep {sweep_id}", title_justify="left")
    table.add_column("point", overflow="fold", min_width=16)
    for name in ("seed", "status", "accuracy", "wall"):
        table.add_column(name, no_wrap=True)
    table.add_column("run id", overflow="fold")
    for r in results:
        status = "[green]FINISHED[/]" if r.status == "FINISHED" else "[bold red]FAILED[/]"
        accuracy = "-" if r.final_accuracy is None else f"{r.final_accuracy:.4f}"
        table.add_row(
            escape(r.point or "(base)"),
            str(r.seed),
            status,
            accuracy,
            f"{r.wall_seconds:.1f} s",
            r.run_id or "-",
        )
    return table


class _SweepProgress(SweepObserver):
    """One progress bar over the sweep: done/total, running, failed; lines when no terminal."""

    def __init__(self, console: Console, total: int):
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]sweep"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[state]}"),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("runs", total=total, state="starting")
        self._running = self._failed = 0

    def __enter__(self) -> _SweepProgress:
        if self._console.is_terminal:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def _state(self) -> str:
        return f"running {self._running}  failed {self._failed}"

    def on_submit(self, run: SweepRun) -> None:
        self._running += 1
        self._progress.update(self._task, state=self._state())

    def on_result(self, result: SweepResult) -> None:
        self._running -= 1
        self._failed += result.status == "FAILED"
        self._progress.update(self._task, advance=1, state=self._state())
        if not self._console.is_terminal:
            done = int(self._progress.tasks[0].completed)
            accuracy = "" if result.final_accuracy is None else f" acc {result.final_accuracy:.4f}"
            self._console.print(
                f"[{done}/{self._progress.tasks[0].total}] {result.point or '(base)'} "
                f"seed {result.seed}: {result.status}{accuracy} ({self._state()})",
                highlight=False,
                soft_wrap=True,
            )
