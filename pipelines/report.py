"""`qfl report EXPERIMENT`: an experiment's runs, read back from MLflow, as one report.

Three layers, each usable alone:

* reading (`read_experiment`): every run of the experiment with its params, tags and
  the full history of the metrics a report uses, as `RunData` (MlflowClient only);
* analysis (`build_report`): pure functions from runs to typed tables and curves
  (`Report`): configurations, convergence, the classical/quantum/hybrid comparison,
  noise robustness, attacks and failures, system efficiency;
* rendering (`write_report`): PNG figures (matplotlib, Agg), a self-contained HTML
  page (figures inlined as base64 data URIs, no script, no network) and a Markdown
  file with the same tables that references the PNGs under `figures/`;
  `log_report` stores both as artifacts of a run named "report" tagged `qfl.report=1`.

A configuration is the set of runs that differ only by seed: runs of one sweep point
(tag `sweep.point`), else runs with the same config `name` and the same params, apart
from the seed, output paths and tracking settings. Numbers "over seeds" are the mean
and the sample standard deviation (0 for a single run) over a configuration's runs.
Only FINISHED runs with a `test_accuracy` history enter the analysis; report runs
(tag `qfl.report`) never do.
"""

from __future__ import annotations

import ast
import base64
import html
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DEFAULT_TARGET = 0.8
REPORT_TAG = "qfl.report"
REPORT_RUN_NAME = "report"
SWEEP_TAG = "sweep.point"
ACCURACY = "test_accuracy"
# params that differ between runs of one configuration without changing what is measured
_IGNORED_PREFIXES = ("seed", "output.", "tracking.", "data.root", "quantum.token")
# per-round counters summed over a run (absent: 0)
COUNTERS = {
    "wall_s": ("round_seconds",),
    "bytes": ("bytes_down", "bytes_up"),
    "quantum_jobs": ("quantum.circuits",),
    "fallbacks": ("updates.fallback",),
    "mitigation_shots": ("mitigation.extra_shots",),
    "failed_clients": ("failed_clients",),
}
# a round's wall-clock phases, one after another (stacked in the figure) ...
TIME_PARTS = ("time.train_s", "time.ledger_s", "time.aggregate_s", "time.eval_s")
# ... and times beside them: the whole round, its simulated network time, and the
# clients' signing (summed over clients, inside training) and the contract's checks
ROUND_TIMES = ("round_seconds", "net.sim_round_s", "sign_seconds", "verify_seconds")
ENERGY = ("energy.kwh", "energy.co2_kg")  # per round; a run's total is their sum
LEDGER_BYTES = "ledger.bytes"
_CUMULATIVE = re.compile(r"(total|clock)")  # running totals (energy.total_kwh): redundant
_WANTED = {ACCURACY, LEDGER_BYTES, *ENERGY, *TIME_PARTS, *ROUND_TIMES}
_WANTED |= {m for keys in COUNTERS.values() for m in keys}
_WANTED_PREFIXES = ("time.", "net.", "energy.")
_AVAILABLE = re.compile(r"^resource\.(?P<name>[^.]+)\.available$")
_NOISE_PARAM = re.compile(r"(\.noise\.|(^|\.)shots$)")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


# ---------------------------------------------------------------- reading


class Series(_Model):
    """One metric of one run: its value at each step (ascending; the last write per step)."""

    steps: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    @property
    def last(self) -> float:
        return self.values[-1]

    @property
    def total(self) -> float:
        return float(sum(self.values))


class RunData(_Model):
    """What a report needs of one MLflow run."""

    run_id: str
    run_name: str = ""
    status: str = "FINISHED"
    params: dict[str, str] = {}
    tags: dict[str, str] = {}
    metrics: dict[str, Series] = {}

    def total(self, key: str) -> float:
        """The sum of `key` over the run's rounds; 0 when the run never logged it."""
        series = self.metrics.get(key)
        return 0.0 if series is None else series.total

    @property
    def final_accuracy(self) -> float:
        return self.metrics[ACCURACY].last


class ExperimentData(_Model):
    """An experiment's runs, as read from the tracking store."""

    name: str
    experiment_id: str
    tracking_uri: str
    runs: tuple[RunData, ...]


def read_experiment(client, experiment: str) -> ExperimentData:
    """Every run of `experiment` (a name, or an id) at `client`'s store, report runs aside.

    Raises LookupError when the store has no such experiment.
    """
    found = client.get_experiment_by_name(experiment)
    if found is None and experiment.isdigit():
        from mlflow.exceptions import MlflowException

        try:
            found = client.get_experiment(experiment)
        except MlflowException:
            found = None
    if found is None:
        raise LookupError(f"no experiment {experiment!r} at {client.tracking_uri}")
    runs = [
        _run_data(client, run)
        for run in _all_runs(client, found.experiment_id)
        if run.data.tags.get(REPORT_TAG) != "1"
    ]
    runs.sort(key=lambda r: (r.params.get("name", ""), r.run_name, r.run_id))
    return ExperimentData(
        name=found.name,
        experiment_id=found.experiment_id,
        tracking_uri=client.tracking_uri,
        runs=tuple(runs),
    )


def _all_runs(client, experiment_id: str) -> Iterable:
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _run_data(client, run) -> RunData:
    keys = [k for k in run.data.metrics if _wanted_metric(k)]
    metrics = {k: _series(client.get_metric_history(run.info.run_id, k)) for k in keys}
    return RunData(
        run_id=run.info.run_id,
        run_name=run.info.run_name or "",
        status=run.info.status,
        params=dict(run.data.params),
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        metrics=metrics,
    )


def _wanted_metric(key: str) -> bool:
    return key in _WANTED or key.startswith(_WANTED_PREFIXES) or bool(_AVAILABLE.match(key))


def _series(history) -> Series:
    """A metric history as a Series: a step logged twice (a resumed run) keeps its last value."""
    by_step: dict[int, tuple[int, float]] = {}
    for m in history:
        if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
            by_step[m.step] = (m.timestamp, float(m.value))
    steps = sorted(by_step)
    return Series(steps=tuple(steps), values=tuple(by_step[s][1] for s in steps))


# ---------------------------------------------------------------- params


def expand_params(params: Mapping[str, str]) -> dict[str, str]:
    """Params with list-of-section values (`resources`) flattened to `resources[0].noise.p2`."""
    out: dict[str, str] = {}
    for key, value in params.items():
        parsed = _literal(value) if value.startswith("[{") else None
        if isinstance(parsed, list) and all(isinstance(item, dict) for item in parsed):
            for i, item in enumerate(parsed):
                out |= _flatten(item, f"{key}[{i}].")
        else:
            out[key] = value
    return out


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None


def _flatten(tree: Mapping, prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = "null" if value is None else str(value)
    return out


def as_number(value: str | None) -> float | None:
    """A param value as a finite number, else None ("null", "True", "[1, 2]", "nan")."""
    if value is None or value in ("True", "False"):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def varying_params(runs: Sequence[RunData]) -> list[str]:
    """Param keys (expanded) whose values differ among `runs`, seeds and paths aside."""
    expanded = [expand_params(r.params) for r in runs]
    keys = sorted({k for p in expanded for k in p})
    return [
        k
        for k in keys
        if not k.startswith(_IGNORED_PREFIXES) and len({p.get(k) for p in expanded}) > 1
    ]


def mitigated(params: Mapping[str, str]) -> bool:
    """Whether a run applied error mitigation (its own layer's, or a resource's)."""
    return any(
        k.endswith("mitigation.techniques") and v not in ("[]", "()", "null", "")
        for k, v in expand_params(params).items()
    )


def client_kind(params: Mapping[str, str]) -> str:
    """classical, quantum or hybrid (or a mix, e.g. `classical+hybrid`) from the config."""
    shares = {
        key.rsplit(".", 1)[1]: as_number(value) or 0.0
        for key, value in params.items()
        if key.startswith(("clients.fractions.", "clients.counts."))
    }
    kinds = [k.replace("quantum_enhanced", "quantum") for k, v in sorted(shares.items()) if v > 0]
    if kinds:
        return "+".join(kinds)
    model = params.get("model.kind", "")
    return {"vqc": "quantum", "hybrid": "hybrid"}.get(model, "classical" if model else "?")


# ---------------------------------------------------------------- configurations


class Configuration(_Model):
    """Runs that differ only by seed; `params` are the (expanded) ones they share."""

    label: str
    kind: str
    params: dict[str, str]
    runs: tuple[RunData, ...]

    @property
    def seeds(self) -> int:
        return len(self.runs)


def analysed_runs(runs: Iterable[RunData]) -> list[RunData]:
    """The runs a report analyses: FINISHED, with a test accuracy history."""
    return [r for r in runs if r.status == "FINISHED" and r.metrics.get(ACCURACY, Series()).steps]


_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)")


def natural_key(parts: Sequence[str]) -> tuple[tuple[tuple[int, float, str], ...], ...]:
    """Sort key for labels with numbers in them: 'eps=2' < 'eps=8' < 'eps=32'."""
    return tuple(
        tuple(
            (0, float(piece), "") if i % 2 else (1, 0.0, piece)
            for i, piece in enumerate(_NUMBER.split(part))
            if piece
        )
        for part in parts
    )


def group_runs(runs: Sequence[RunData]) -> list[Configuration]:
    """Configurations: by tag `sweep.point`, else by config name plus the params that vary."""
    groups: dict[tuple[str, ...], list[RunData]] = {}
    labels: dict[tuple[str, ...], str] = {}
    by_name: dict[str, list[RunData]] = {}
    for run in runs:
        point = run.tags.get(SWEEP_TAG)
        if point is not None:
            key = ("sweep", run.params.get("name", ""), point)
            groups.setdefault(key, []).append(run)
            labels[key] = _join(run.params.get("name", ""), point)
        else:
            by_name.setdefault(run.params.get("name", run.run_name), []).append(run)
    for name, named in by_name.items():
        varying = varying_params(named)
        for run in named:
            expanded = expand_params(run.params)
            values = tuple(f"{k}={expanded.get(k, '-')}" for k in varying)
            key = ("name", name, *values)
            groups.setdefault(key, []).append(run)
            labels[key] = _join(name, ", ".join(values))
    return [_configuration(labels[key], groups[key]) for key in sorted(groups, key=natural_key)]


def _join(name: str, detail: str) -> str:
    if not detail:
        return name or "(unnamed)"
    return f"{name} [{detail}]" if name else detail


def _configuration(label: str, runs: list[RunData]) -> Configuration:
    expanded = [expand_params(r.params) for r in runs]
    shared = {k: v for k, v in expanded[0].items() if all(p.get(k) == v for p in expanded[1:])}
    return Configuration(
        label=label, kind=client_kind(runs[0].params), params=shared, runs=tuple(runs)
    )


# ---------------------------------------------------------------- statistics


class Stat(_Model):
    """Mean, sample std, min and max of some numbers (n of them)."""

    mean: float
    std: float
    low: float
    high: float
    n: int


def stat(values: Sequence[float]) -> Stat:
    """Mean and sample standard deviation (0 for one value), min and max."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return Stat(
        mean=float(array.mean()),
        std=std,
        low=float(array.min()),
        high=float(array.max()),
        n=int(array.size),
    )


class Curve(_Model):
    """A metric per round over a configuration's runs: mean, std and min/max at each step."""

    label: str
    steps: tuple[int, ...]
    points: tuple[Stat, ...]


def curve(label: str, runs: Sequence[RunData], key: str = ACCURACY) -> Curve | None:
    """`key` per step over `runs` (each step over the runs that logged it); None: no data."""
    at: dict[int, list[float]] = {}
    for run in runs:
        series = run.metrics.get(key)
        if series is None:
            continue
        for step, value in zip(series.steps, series.values, strict=True):
            at.setdefault(step, []).append(value)
    if not at:
        return None
    steps = sorted(at)
    return Curve(label=label, steps=tuple(steps), points=tuple(stat(at[s]) for s in steps))


def rounds_to_target(accuracy: Curve, target: float) -> int | None:
    """The first round whose mean accuracy over seeds reaches `target`; None: never."""
    for step, point in zip(accuracy.steps, accuracy.points, strict=True):
        if point.mean >= target:
            return step
    return None


# ---------------------------------------------------------------- sections


class ComparisonRow(_Model):
    """One configuration in the classical / quantum / hybrid table (means over seeds)."""

    label: str
    kind: str
    seeds: int
    rounds: int
    final_accuracy: Stat
    rounds_to_target: int | None
    wall_s: float
    bytes: float
    quantum_jobs: float
    fallbacks: float
    mitigation_shots: float
    failed_clients: float
    outage_rounds: float


def comparison_row(config: Configuration, target: float) -> ComparisonRow:
    accuracy = curve(config.label, config.runs)
    totals = {
        name: float(np.mean([sum(r.total(k) for k in keys) for r in config.runs]))
        for name, keys in COUNTERS.items()
    }
    return ComparisonRow(
        label=config.label,
        kind=config.kind,
        seeds=config.seeds,
        rounds=max(accuracy.steps),
        final_accuracy=stat([r.final_accuracy for r in config.runs]),
        rounds_to_target=rounds_to_target(accuracy, target),
        outage_rounds=float(np.mean([outage_rounds(r) for r in config.runs])),
        **totals,
    )


def outage_rounds(run: RunData) -> int:
    """Rounds in which at least one quantum resource was reported unavailable."""
    down: set[int] = set()
    for key, series in run.metrics.items():
        if _AVAILABLE.match(key):
            down |= {s for s, v in zip(series.steps, series.values, strict=True) if v < 0.5}
    return len(down)


class SweepPoint(_Model):
    """Final accuracy of the runs sharing one value of a param (and one series)."""

    x: float
    accuracy: Stat


class SweepSeries(_Model):
    label: str
    points: tuple[SweepPoint, ...]


class SweepPlot(_Model):
    """Final accuracy against one param, one series per group (e.g. mitigation on/off)."""

    param: str
    series: tuple[SweepSeries, ...]


def sweep_plot(
    runs: Sequence[RunData],
    param: str,
    series_of: Callable[[RunData], str],
    x_of: Callable[[RunData], float | None] | None = None,
) -> SweepPlot:
    """Runs grouped by `series_of` and by their numeric value of `param` (or `x_of`)."""
    x_of = x_of or (lambda r: as_number(expand_params(r.params).get(param)))
    grouped: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        x = x_of(run)
        if x is not None:
            grouped.setdefault(series_of(run), {}).setdefault(x, []).append(run.final_accuracy)
    series = tuple(
        SweepSeries(
            label=label,
            points=tuple(SweepPoint(x=x, accuracy=stat(v)) for x, v in sorted(by_x.items())),
        )
        for label, by_x in sorted(grouped.items())
    )
    return SweepPlot(param=param, series=series)


def noise_plots(runs: Sequence[RunData]) -> list[SweepPlot]:
    """Final accuracy against each noise or shots param that takes >= 2 numeric values."""
    plots = []
    for key in varying_params(runs):
        if not _NOISE_PARAM.search(key):
            continue
        values = {as_number(expand_params(r.params).get(key)) for r in runs} - {None}
        if len(values) >= 2:
            plots.append(sweep_plot(runs, key, _mitigation_label))
    return plots


def _mitigation_label(run: RunData) -> str:
    return "with mitigation" if mitigated(run.params) else "without mitigation"


def attack_fraction(run: RunData) -> float | None:
    """The run's share of attackers (0 when attack.kind is none); None: no attack params."""
    kind, fraction = run.params.get("attack.kind"), run.params.get("attack.fraction")
    if kind is None and fraction is None:
        return None
    return 0.0 if kind in (None, "none") else as_number(fraction)


def attack_plot(runs: Sequence[RunData]) -> SweepPlot | None:
    """Final accuracy against attack.fraction per aggregation.rule; None: no attacked run."""
    fractions = {attack_fraction(r) for r in runs} - {None}
    if not any(f > 0 for f in fractions):
        return None
    return sweep_plot(
        runs,
        "attack.fraction",
        lambda r: r.params.get("aggregation.rule", "?"),
        attack_fraction,
    )


class EfficiencyRow(_Model):
    """One configuration's cost: per-round means of each time metric, energy totals, ledger."""

    label: str
    per_round: dict[str, float]  # metric -> mean value per round, over rounds and seeds
    energy: dict[str, float]  # metric -> mean over seeds of the run's total
    ledger_bytes_last: float | None = None


def efficiency_row(config: Configuration, keys: Sequence[str]) -> EfficiencyRow:
    per_round: dict[str, float] = {}
    energy: dict[str, float] = {}
    for key in keys:
        logged = [r.metrics[key] for r in config.runs if key in r.metrics]
        if not logged:
            continue
        if key.startswith("energy."):
            energy[key] = float(np.mean([s.total for s in logged]))
        else:
            per_round[key] = float(np.mean([v for s in logged for v in s.values]))
    ledger = [r.metrics[LEDGER_BYTES].last for r in config.runs if LEDGER_BYTES in r.metrics]
    return EfficiencyRow(
        label=config.label,
        per_round=per_round,
        energy=energy,
        ledger_bytes_last=float(np.mean(ledger)) if ledger else None,
    )


def efficiency_keys(runs: Sequence[RunData]) -> list[str]:
    """The efficiency metrics the runs logged: the round's parts, its totals, net, energy."""
    logged = {k for r in runs for k in r.metrics}
    known = [*TIME_PARTS, *ROUND_TIMES, LEDGER_BYTES, *ENERGY]
    extra = sorted(
        k
        for k in logged
        if k.startswith(_WANTED_PREFIXES) and k not in known and not _CUMULATIVE.search(k)
    )
    return [k for k in [*known, *extra] if k in logged]


# ---------------------------------------------------------------- the report


class Report(_Model):
    """Everything a rendered report shows, computed from the runs alone."""

    experiment: str
    tracking_uri: str
    target: float
    runs_total: int
    left_out: tuple[str, ...] = Field((), description="run names/ids not analysed, and why")
    configurations: tuple[str, ...] = ()
    convergence: tuple[Curve, ...] = ()
    comparison: tuple[ComparisonRow, ...] = ()
    noise: tuple[SweepPlot, ...] = ()
    attack: SweepPlot | None = None
    efficiency_keys: tuple[str, ...] = ()
    efficiency: tuple[EfficiencyRow, ...] = ()
    ledger_curves: tuple[Curve, ...] = ()


def build_report(data: ExperimentData, target: float = DEFAULT_TARGET) -> Report:
    """Every section's numbers; a section the runs hold no data for stays empty."""
    runs = analysed_runs(data.runs)
    kept = {r.run_id for r in runs}
    left_out = tuple(
        f"{r.run_name or r.run_id} ({r.status.lower()}"
        f"{'' if ACCURACY in r.metrics else ', no test_accuracy'})"
        for r in data.runs
        if r.run_id not in kept
    )
    configs = group_runs(runs)
    keys = efficiency_keys(runs)
    ledger = [curve(c.label, c.runs, LEDGER_BYTES) for c in configs]
    return Report(
        experiment=data.name,
        tracking_uri=data.tracking_uri,
        target=target,
        runs_total=len(data.runs),
        left_out=left_out,
        configurations=tuple(c.label for c in configs),
        convergence=tuple(curve(c.label, c.runs) for c in configs),
        comparison=tuple(comparison_row(c, target) for c in configs),
        noise=tuple(noise_plots(runs)),
        attack=attack_plot(runs),
        efficiency_keys=tuple(keys),
        efficiency=tuple(efficiency_row(c, keys) for c in configs) if keys else (),
        ledger_curves=tuple(c for c in ledger if c is not None),
    )


# ---------------------------------------------------------------- figures


class Figure(_Model):
    """A PNG written under the report folder: `path` is relative to it."""

    path: str
    caption: str


def _save(fig, out: Path, name: str, caption: str) -> Figure:
    relative = f"figures/{name}.png"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(out / relative, dpi=100)
    plt.close(fig)
    return Figure(path=relative, caption=caption)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower() or "param"


def plot_curves(curves: Sequence[Curve], ylabel: str, out: Path, name: str, caption: str):
    """One line per curve (mean over seeds) with its min-max band."""
    fig, ax = plt.subplots(figsize=(7.5, 4), constrained_layout=True)
    for c in curves:
        mean = [p.mean for p in c.points]
        ax.plot(c.steps, mean, marker="o", markersize=3, label=c.label)
        ax.fill_between(c.steps, [p.low for p in c.points], [p.high for p in c.points], alpha=0.2)
    ax.set(xlabel="round", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7)
    return _save(fig, out, name, caption)


def plot_sweep(plot: SweepPlot, out: Path, name: str, caption: str) -> Figure:
    """Final accuracy (mean, std error bars) against the param, one line per series."""
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for s in plot.series:
        x = [p.x for p in s.points]
        ax.errorbar(
            x,
            [p.accuracy.mean for p in s.points],
            yerr=[p.accuracy.std for p in s.points],
            marker="o",
            capsize=3,
            label=s.label,
        )
    ax.set(xlabel=plot.param, ylabel="final test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out, name, caption)


def plot_final_accuracy(rows: Sequence[ComparisonRow], out: Path) -> Figure:
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.4 * len(rows)), constrained_layout=True)
    y = np.arange(len(rows))
    ax.barh(y, [r.final_accuracy.mean for r in rows], xerr=[r.final_accuracy.std for r in rows])
    ax.set_yticks(y, [f"{r.label} ({r.kind})" for r in rows], fontsize=7)
    ax.set(xlabel="final test accuracy (mean ± std over seeds)", xlim=(0, 1))
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out, "final_accuracy", "Final test accuracy per configuration.")


def plot_round_time(rows: Sequence[EfficiencyRow], out: Path) -> Figure:
    """The round's parts stacked per configuration, round and network time beside them."""
    fig, ax = plt.subplots(figsize=(8.5, 1.6 + 0.6 * len(rows)), constrained_layout=True)
    y = np.arange(len(rows))
    left = np.zeros(len(rows))
    for key in TIME_PARTS:
        widths = np.array([r.per_round.get(key, 0.0) for r in rows])
        if widths.any():
            ax.barh(y - 0.2, widths, left=left, height=0.35, label=key)
            left += widths
    beside = [k for k in ROUND_TIMES if any(r.per_round.get(k) for r in rows)]
    for j, key in enumerate(beside):
        height = 0.4 / len(beside)
        widths = [r.per_round.get(key, 0.0) for r in rows]
        ax.barh(y + (j + 0.5) * height, widths, height=height, label=key, alpha=0.7)
    ax.set_yticks(y, [r.label for r in rows], fontsize=7)
    ax.set(xlabel="seconds per round (mean)")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3, axis="x")
    caption = (
        "Seconds per round: the round's phases stacked (time.*), beside them the whole "
        "round, the simulated network round, the clients' signing (summed over clients) "
        "and the ledger's checks of updates."
    )
    return _save(fig, out, "round_time", caption)


# ---------------------------------------------------------------- tables and sections


class Table(_Model):
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


class Section(_Model):
    """A titled part of the report: text, tables and figures, or a 'no data' note."""

    title: str
    text: str = ""
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()
    no_data: str | None = None  # why there is nothing to show


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value != 0 and (abs(value) >= 1e6 or abs(value) < 10**-digits):
        return f"{value:.3g}"
    return f"{value:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:,.0f}"


def _pm(s: Stat) -> str:
    return f"{s.mean:.4f} ± {s.std:.4f}"


def convergence_section(report: Report, out: Path) -> Section:
    title = "Convergence"
    if not report.convergence:
        return Section(title=title, no_data="no finished run logged test_accuracy")
    figure = plot_curves(
        report.convergence,
        "test accuracy",
        out,
        "convergence",
        "Test accuracy per round: mean over seeds, band from min to max.",
    )
    rows = [
        (c.label, str(c.points[-1].n), str(c.steps[-1]), _pm(c.points[-1]))
        for c in report.convergence
    ]
    table = Table(header=("configuration", "seeds", "last round", "accuracy there"), rows=rows)
    return Section(title=title, tables=(table,), figures=(figure,))


def comparison_section(report: Report, out: Path) -> Section:
    title = "Classical vs quantum vs hybrid"
    if not report.comparison:
        return Section(title=title, no_data="no finished run logged test_accuracy")
    header = (
        "configuration",
        "kind",
        "seeds",
        "rounds",
        "final accuracy",
        f"rounds to {report.target:g}",
        "wall time (s)",
        "bytes communicated",
        "quantum jobs",
        "fallbacks",
        "mitigation extra shots",
    )
    rows = [
        (
            r.label,
            r.kind,
            str(r.seeds),
            str(r.rounds),
            _pm(r.final_accuracy),
            "not reached" if r.rounds_to_target is None else str(r.rounds_to_target),
            _num(r.wall_s, 2),
            _num(r.bytes, 0),
            _num(r.quantum_jobs, 0),
            _num(r.fallbacks, 1),
            _num(r.mitigation_shots, 0),
        )
        for r in report.comparison
    ]
    text = (
        "Means over seeds; wall time, bytes (down + up), quantum jobs (circuits), fallbacks "
        "and mitigation shots are each run's sums over its rounds. Rounds to target: the "
        "first round whose mean accuracy over seeds reaches it."
    )
    figure = plot_final_accuracy(report.comparison, out)
    return Section(
        title=title, text=text, tables=(Table(header=header, rows=rows),), figures=(figure,)
    )


def noise_section(report: Report, out: Path) -> Section:
    title = "Noise robustness"
    if not report.noise:
        return Section(
            title=title,
            no_data="no noise or shots param takes two or more numeric values among the runs",
        )
    figures, rows = [], []
    for plot in report.noise:
        figures.append(
            plot_sweep(
                plot,
                out,
                f"noise_{_slug(plot.param)}",
                f"Final test accuracy against {plot.param}.",
            )
        )
        rows += _sweep_rows(plot)
    table = Table(header=("param", "value", "series", "runs", "final accuracy"), rows=rows)
    return Section(title=title, tables=(table,), figures=tuple(figures))


def _sweep_rows(plot: SweepPlot, *, with_param: bool = True) -> list[tuple[str, ...]]:
    """Rows of (param,) value, series, runs, accuracy; without the param: series first."""
    rows = []
    for s in plot.series:
        for p in s.points:
            cells = (_num(p.x, 6), str(p.accuracy.n), _pm(p.accuracy))
            rows.append(
                (plot.param, cells[0], s.label, *cells[1:]) if with_param else (s.label, *cells)
            )
    return rows


def robustness_section(report: Report, out: Path) -> Section:
    title = "Robustness"
    tables, figures, notes = [], [], []
    if report.attack is not None:
        figures.append(
            plot_sweep(
                report.attack,
                out,
                "attack_fraction",
                "Final test accuracy against the fraction of attackers, per rule.",
            )
        )
        rows = _sweep_rows(report.attack, with_param=False)
        header = ("aggregation.rule", "attack.fraction", "runs", "final accuracy")
        tables.append(Table(header=header, rows=rows))
    else:
        notes.append("Attacks: no data (no run has an attack.kind other than none).")
    if report.comparison:
        header = ("configuration", "failed clients", "outage rounds", "fallbacks")
        rows = [
            (r.label, _num(r.failed_clients, 1), _num(r.outage_rounds, 1), _num(r.fallbacks, 1))
            for r in report.comparison
        ]
        tables.append(Table(header=header, rows=rows))
    if not tables:
        return Section(title=title, no_data="no finished run logged test_accuracy")
    notes.append(
        "Failed clients: sum over rounds of failed_clients; outage rounds: rounds in which "
        "some resource.<name>.available was 0 (means over seeds)."
    )
    return Section(title=title, text=" ".join(notes), tables=tuple(tables), figures=tuple(figures))


def efficiency_section(report: Report, out: Path) -> Section:
    title = "System efficiency"
    if not report.efficiency:
        return Section(title=title, no_data="no run logged time, network, energy or ledger metrics")
    energy = [k for k in report.efficiency_keys if k.startswith("energy.")]
    per_round = [k for k in report.efficiency_keys if k not in energy and k != LEDGER_BYTES]
    header = ("configuration", *(f"{k} /round" for k in per_round), *(f"{k} total" for k in energy))
    header += (f"{LEDGER_BYTES} /round", f"{LEDGER_BYTES} last") if report.ledger_curves else ()
    rows = []
    for r in report.efficiency:
        row = [r.label, *(_num(r.per_round.get(k), 4) for k in per_round)]
        row += [_num(r.energy.get(k), 6) for k in energy]
        if report.ledger_curves:
            row += [_num(r.per_round.get(LEDGER_BYTES), 0), _num(r.ledger_bytes_last, 0)]
        rows.append(tuple(row))
    figures = [plot_round_time(report.efficiency, out)]
    if report.ledger_curves:
        figures.append(
            plot_curves(
                report.ledger_curves,
                LEDGER_BYTES,
                out,
                "ledger_bytes",
                "Ledger bytes per round: mean over seeds, min-max band.",
            )
        )
    missing = [
        k
        for k in (*TIME_PARTS, *ROUND_TIMES, *ENERGY, LEDGER_BYTES)
        if k not in report.efficiency_keys
    ]
    text = (
        "Per-round values are means over rounds and seeds; energy totals are each run's "
        "sums over its rounds, means over seeds."
    )
    if missing:
        text += " Not logged by these runs: " + ", ".join(missing) + "."
    table = Table(header=header, rows=tuple(rows))
    return Section(title=title, text=text, tables=(table,), figures=tuple(figures))


def sections(report: Report, out: Path) -> list[Section]:
    """Every section, its figures written under `out/figures/`."""
    makers = (
        convergence_section,
        comparison_section,
        noise_section,
        robustness_section,
        efficiency_section,
    )
    return [make(report, out) for make in makers]


# ---------------------------------------------------------------- HTML and Markdown

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #eee; }
figure { margin: 1em 0; } img { max-width: 100%; } .wide { overflow-x: auto; }
.nodata { color: #888; font-style: italic; }
"""


def render_html(report: Report, parts: Sequence[Section], out: Path) -> str:
    """One page; every figure inlined as a base64 PNG data URI (opens without network)."""
    e = html.escape
    body = [f"<h1>qfl report: {e(report.experiment)}</h1>", f"<p>{e(_summary(report))}</p>"]
    for part in parts:
        body.append(f"<h2>{e(part.title)}</h2>")
        if part.no_data is not None:
            body.append(f'<p class="nodata">no data: {e(part.no_data)}</p>')
            continue
        if part.text:
            body.append(f"<p>{e(part.text)}</p>")
        for table in part.tables:
            head = "".join(f"<th>{e(h)}</th>" for h in table.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in table.rows
            )
            body.append(
                f'<div class="wide"><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{rows}</tbody></table></div>"
            )
        for fig in part.figures:
            data = base64.b64encode((out / fig.path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(fig.caption)}">'
                f"<figcaption>{e(fig.caption)}</figcaption></figure>"
            )
    title = e(f"qfl report: {report.experiment}")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def render_markdown(report: Report, parts: Sequence[Section]) -> str:
    """The same sections; figures referenced as `figures/<name>.png` beside the file."""
    lines = [f"# qfl report: {report.experiment}", "", _summary(report), ""]
    for part in parts:
        lines += [f"## {part.title}", ""]
        if part.no_data is not None:
            lines += [f"_no data: {part.no_data}_", ""]
            continue
        if part.text:
            lines += [part.text, ""]
        for table in part.tables:
            lines += [_md_row(table.header), _md_row(["---"] * len(table.header))]
            lines += [_md_row(row) for row in table.rows] + [""]
        for fig in part.figures:
            lines += [f"![{_md_cell(fig.caption)}]({fig.path})", ""]
    return "\n".join(lines)


def _md_row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(_md_cell(c) for c in cells) + " |"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("[", "\\[").replace("]", "\\]")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _summary(report: Report) -> str:
    text = (
        f"Experiment {report.experiment!r} at {report.tracking_uri}: "
        f"{_count(report.runs_total, 'run')}, "
        f"{_count(len(report.configurations), 'configuration')}; "
        f"target accuracy {report.target:g}."
    )
    if report.left_out:
        text += " Not analysed: " + ", ".join(report.left_out) + "."
    return text


class ReportFiles(_Model):
    """What `write_report` wrote."""

    html: Path
    markdown: Path
    figures: tuple[Path, ...]


def write_report(report: Report, out: Path) -> ReportFiles:
    """Write out/report.html, out/report.md and out/figures/*.png."""
    out.mkdir(parents=True, exist_ok=True)
    parts = sections(report, out)
    html_path, md_path = out / "report.html", out / "report.md"
    html_path.write_text(render_html(report, parts, out), encoding="utf-8")
    md_path.write_text(render_markdown(report, parts), encoding="utf-8")
    figures = tuple(out / f.path for part in parts for f in part.figures)
    return ReportFiles(html=html_path, markdown=md_path, figures=figures)


def log_report(client, experiment_id: str, files: ReportFiles, runs: int) -> str:
    """Store the report as artifacts (`report/`) of a new run named "report"; its id."""
    tags = {REPORT_TAG: "1", "qfl.report.runs": str(runs)}
    run = client.create_run(experiment_id, run_name=REPORT_RUN_NAME, tags=tags)
    run_id = run.info.run_id
    try:
        client.log_artifact(run_id, str(files.html), "report")
        client.log_artifact(run_id, str(files.markdown), "report")
        for figure in files.figures:
            client.log_artifact(run_id, str(figure), "report/figures")
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
