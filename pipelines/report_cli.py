"""`qfl report`'s command line; `pipelines.report` (matplotlib, MLflow) loads only when
the command runs, so other `qfl` commands start without it."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path


def add_report_parser(commands) -> None:
    """`qfl report EXPERIMENT [--out DIR] [--tracking-uri URI] [--target ACC]`."""
    report = commands.add_parser(
        "report", help="write an HTML and Markdown report of an experiment's runs"
    )
    report.add_argument("experiment", help="MLflow experiment name (or id)")
    report.add_argument("--out", help="output folder (default: reports/<experiment>)")
    report.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    report.add_argument(
        "--target",
        type=_accuracy,
        default=None,
        help="accuracy for 'rounds to target' (default 0.8)",
    )
    report.add_argument("--no-log", action="store_true", help="do not store the report in MLflow")


def _accuracy(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an accuracy in [0, 1]")
    return value


def run_report_command(args: argparse.Namespace, console, errors) -> int:
    """Read, analyse, write and log; 0 ok, 1 a tracking store failure, 2 no such experiment."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from rich.markup import escape

    from pipelines.report import (
        DEFAULT_TARGET,
        REPORT_TAG,
        _slug,
        build_report,
        log_report,
        read_experiment,
        write_report,
    )
    from pipelines.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), None)
    out = Path(args.out) if args.out else Path("reports") / _slug(args.experiment)
    try:
        client = MlflowClient(tracking_uri=uri)
        data = read_experiment(client, args.experiment)
        target = DEFAULT_TARGET if args.target is None else args.target
        report = build_report(data, target=target)
        files = write_report(report, out)
        run_id = (
            None if args.no_log else log_report(client, data.experiment_id, files, len(data.runs))
        )
    except LookupError as exc:
        errors.print(f"[bold red]report error[/]: {escape(str(exc))}", soft_wrap=True)
        return 2
    except (MlflowException, OSError) as exc:
        errors.print(f"[bold red]report failed[/]: {escape(str(exc))}", soft_wrap=True)
        return 1
    console.print(f"report: {files.html}", highlight=False, soft_wrap=True)
    console.print(f"markdown: {files.markdown}", highlight=False, soft_wrap=True)
    if run_id is not None:
        console.print(f"logged to MLflow run {run_id} ({REPORT_TAG}=1)", highlight=False)
    return 0
