"""The `qfl` command line.

    qfl run CONFIG [--set section.key=value ...] [--tracking-uri URI] [--address ADDR]
            [--resume RUN_ID]
    qfl validate CONFIG [--set ...]      # check and print the resolved config
    qfl sweep CONFIG --grid key=v1,v2 [--grid ...] [--seeds N] [--set ...] [--experiment NAME]
            [--tracking-uri URI] [--address ADDR] [--parallel K]   # a grid of runs on Ray
    qfl report EXPERIMENT [--out DIR] [--tracking-uri URI] [--target ACC]   # HTML + Markdown

Signing keys, ML-KEM keys and DP noise derive from the run's master secret: set
QFL_MASTER_SECRET (hex, >= 32 bytes, e.g. `openssl rand -hex 32`) for a run whose
signatures nobody else can forge; without it they derive from the run seed
(reproducible, and forgeable by anyone who has the config).

Exit codes: 0 success, 1 a run that failed, 2 a bad config or usage (before any work),
130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.config import (
    ExperimentConfig,
    dump_config,
    environment_master_secret,
    load_config,
    with_ibm_token,
)
from pipelines.report_cli import add_report_parser, run_report_command
from qfl.errors import ConfigError, QflError

EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qfl", description="Hybrid classical-quantum federated learning on Ray."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run an experiment config")
    _config_args(run)
    run.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI "
        "or the config's tracking.uri or sqlite:///mlflow.db)",
    )
    run.add_argument("--address", help="Ray address: 'auto' or ray://host:port (default: local)")
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a stopped run from its last committed round (same config, same run)",
    )
    validate = commands.add_parser("validate", help="check a config and print it resolved")
    _config_args(validate)
    from pipelines.sweep_cli import add_sweep_parser

    _config_args(add_sweep_parser(commands))
    _ledger_parser(commands)
    add_report_parser(commands)
    return parser


def _ledger_parser(commands) -> None:
    ledger = commands.add_parser("ledger", help="verify, show or export a run's ledger")
    actions = ledger.add_subparsers(dest="action", required=True)
    verify = actions.add_parser("verify", help="re-check every hash, signature and quorum")
    verify.add_argument("path", help="a ledger.db (runs/<run_id>/ledger.db)")
    verify.add_argument("--head", help="expected head block hash (hex), e.g. the MLflow tag")
    verify.add_argument("--backend", default="auto", choices=["auto", "liboqs", "cryptography"])
    show = actions.add_parser("show", help="list blocks, or one block's transactions")
    show.add_argument("path")
    show.add_argument("--height", type=int, help="show this block in full")
    export = actions.add_parser("export", help="every transaction as JSON lines")
    export.add_argument("path")
    export.add_argument("--jsonl", action="store_true", required=True, help="JSON lines output")


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML file")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax); repeatable",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=False)
    errors = Console(stderr=True)
    try:
        if args.command == "report":
            return run_report_command(args, console, errors)
        if args.command == "sweep":
            from pipelines.sweep_cli import run_sweep_command

            return run_sweep_command(args, console, errors)
        if args.command == "ledger":
            from pipelines.ledger_cli import run_ledger_command

            return run_ledger_command(args, console, errors)
        config = load_config(args.config, args.overrides)
        if args.command == "validate":
            sys.stdout.write(dump_config(config))
            return 0
        return _run(args, config, console)
    except ConfigError as exc:
        errors.print(
            f"[bold red]config error[/]: {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return EXIT_CONFIG
    except KeyboardInterrupt:
        errors.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED
    except QflError as exc:
        errors.print(
            f"[bold red]run failed[/]: {type(exc).__name__}: {escape(str(exc))}",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_FAILED


def _run(args: argparse.Namespace, config: ExperimentConfig, console: Console) -> int:
    secret = environment_master_secret(os.environ)  # a bad one stops here, exit 2
    # Heavy imports (ray, torch, mlflow) only once the config is known to be good.
    from pipelines.run import run_experiment
    from pipelines.tracking import resolve_tracking_uri

    if args.address:
        config = config.model_copy(
            update={"ray": config.ray.model_copy(update={"address": args.address})}
        )
    config = with_ibm_token(config, os.environ.get("QISKIT_IBM_TOKEN"))
    uri = resolve_tracking_uri(
        args.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), config.tracking.uri
    )
    with _ProgressObserver(console) as observer:
        summary = run_experiment(
            config,
            tracking_uri=uri,
            observer=observer,
            config_source=args.config,
            resume=args.resume,
            master_secret=secret,
        )
    console.print(_summary_table(summary))
    return 0


def _summary_table(summary) -> Table:
    table = Table(title="qfl run summary", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("final test accuracy", f"{summary.final_accuracy:.4f}"),
        ("final test loss", f"{summary.final_loss:.4f}"),
        ("rounds", str(summary.rounds)),
        ("wall time", f"{summary.wall_seconds:.1f} s"),
        ("final weights sha256", summary.weights_hash[:16] + "..."),
        ("mlflow run", f"{summary.run_id} (experiment {summary.experiment!r})"),
        ("tracking uri", summary.tracking_uri),
        ("artifacts", summary.artifact_uri),
        ("run folder", str(summary.run_dir)),
    ]
    if summary.ledger_path is not None:
        rows += [("ledger", str(summary.ledger_path)), ("ledger head", summary.ledger_head)]
    for key, value in rows:
        table.add_row(key, value)
    return table


class _ProgressObserver:
    """A live progress bar with the latest round metrics; plain lines when not a terminal."""

    def __init__(self, console: Console):
        self._console = console
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            transient=False,
        )
        self._task = None

    def __enter__(self) -> _ProgressObserver:
        if self._console.is_terminal:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def on_start(self, run_id: str, total_rounds: int) -> None:
        self._console.print(f"mlflow run {run_id}: {total_rounds} rounds", highlight=False)
        self._task = self._progress.add_task("rounds", total=total_rounds, metrics="starting Ray")

    def on_round(self, record) -> None:
        text = (
            f"acc {record.test_accuracy:.4f}  loss {record.test_loss:.4f}  "
            f"clients {record.participants} (failed {record.failed})  {record.seconds:.2f}s"
        )
        self._progress.update(self._task, advance=1, metrics=text)
        if not self._console.is_terminal:
            self._console.print(f"round {record.round}: {text}", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
