"""NF: the loss floor of Eq. 8 grows with the quantum noise variance (shots).

Eq. 8 bounds the expected excess loss after T rounds by a contracting term plus
a floor set by the noise variances:

    E[F(w_T)] - F(w*) <= rho^T (F(w_0) - F(w*)) + (sigma_C^2 + sigma_Q^2) / (2 mu)

With S shots per circuit an expectation value is estimated with variance
(1 - <O>^2) / S, so the quantum gradient noise is sigma_Q^2 = v / S and the
predicted floor is affine in 1 / S: floor(S) = a + b / S (a: the exact run,
sigma_Q = 0, whose floor comes from sigma_C^2 alone: F(w*) here, where sigma_C = 0).

The run: configs/noise-floor.yaml (a 4-qubit VQC on digits 5 vs 9; every client
quantum-enhanced on a noiseless Aer stand-in of a QPU, so shot noise is the only
quantum noise), once per shots setting, same seed (same data and initial weights),
all in one MLflow experiment, each run tagged `noise_floor.shots`. "exact" runs the
same clients on the classical path (exact simulation of the same circuit). The driver
evaluates every round exactly, free of evaluation shots: F(w_t) on the clients' pooled
data (`train_loss`, the objective Eq. 8 bounds) and the held-out test loss. The floor
of a run is its mean F(w_t) over the last K rounds; the test loss gets one too. A
summary run in the same experiment gets the floors, the fit of a + b / S and the plot
(loss per round for each setting; floors against 1 / S with the fitted Eq. 8 lines),
which is also logged to every run.

Why full-batch local steps: with minibatches, sigma_C^2 (the variance of the per-sample
gradient across the data, ~0.1 per parameter here) is far above the shot variance of a
parameter-shift gradient, ~1 / (2 S) per parameter, from S = 128 on, and the floors of
128, 512 and 2048 shots cannot be told from the exact one (measured: 0.2963, 0.2971,
0.2953 against 0.2960 in the test loss). Each client's batch is its whole data, so
sigma_C = 0: the exact run is deterministic and settles on F(w*); a run with shots
hovers above it by an excess that grows with 1 / S. Why F(w_t) and not the test loss:
the exact run overfits its 72 rows after about 40 rounds, so its test loss climbs
again while F keeps falling, and the noisy runs' test loss can end below it.

    python benchmarks/noise_floor.py [--config configs/noise-floor.yaml] [--last 30]
        [--shots 128,512,2048,exact] [--set key=value ...] [--tracking-uri URI] [--plot PNG]

The last line is `NF <floor_128> <floor_512> <floor_2048> <floor_exact>` (F(w_t)
floors, in the order of --shots).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.config import ExperimentConfig, load_config  # noqa: E402
from pipelines.run import RoundRecord, RunObserver, ray_session, run_experiment  # noqa: E402
from pipelines.tracking import Tracker, resolve_tracking_uri  # noqa: E402

EXACT = "exact"
SHOTS_TAG = "noise_floor.shots"
METRIC_LABELS = {
    "losses": "F(w_t): loss on the clients' data (exact)",
    "test_losses": "held-out test loss (exact)",
}


@dataclass(frozen=True)
class Curve:
    """The losses per round of one shots setting (shots None: exact) and its MLflow run."""

    shots: int | None
    rounds: tuple[int, ...]
    losses: tuple[float, ...]  # F(w_t) on the clients' data, evaluated exactly by the driver
    test_losses: tuple[float, ...] = ()  # the held-out test loss, evaluated exactly
    run_id: str = ""

    @property
    def label(self) -> str:
        return EXACT if self.shots is None else f"{self.shots} shots"


def loss_floor(losses: Sequence[float], last: int) -> float:
    """The plateau of a loss curve: the mean of its last `last` values."""
    if last < 1:
        raise ValueError(f"last={last}: average at least one round")
    if len(losses) < last:
        raise ValueError(f"{len(losses)} rounds: fewer than the last {last} to average")
    return float(np.mean(losses[-last:]))


def inverse_shots(shots: Sequence[int | None]) -> np.ndarray:
    """1 / S per setting, 0 for exact: the quantum noise variance up to a factor."""
    return np.array([0.0 if s is None else 1.0 / s for s in shots])


def fit_floor(shots: Sequence[int | None], floors: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line floor = a + b / S (Eq. 8 with sigma_Q^2 = v / S)."""
    x = inverse_shots(shots)
    if len(set(x.tolist())) < 2:
        raise ValueError("fitting a + b / S needs at least two different shot counts")
    design = np.stack([np.ones_like(x), x], axis=1)  # (settings, 2)
    (a, b), *_ = np.linalg.lstsq(design, np.asarray(floors, dtype=float), rcond=None)
    return float(a), float(b)


def noise_floor_plot(
    curves: Sequence[Curve],
    floors: Mapping[str, Sequence[float]],
    last: int,
    path: Path,
    title: str,
) -> Path:
    """A PNG: each metric's loss per round per setting (floors dashed), then floor vs 1 / S.

    `floors` maps a metric of `Curve` (`losses`, `test_losses`) to its floor per curve.
    """
    metrics = list(floors)
    fig, axes = plt.subplots(
        1, len(metrics) + 1, figsize=(5 * (len(metrics) + 1), 4), constrained_layout=True
    )
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, len(curves)))
    for ax, metric in zip(axes, metrics, strict=False):
        for curve, floor, color in zip(curves, floors[metric], colors, strict=True):
            values = getattr(curve, metric)
            ax.plot(curve.rounds, values, marker="o", ms=3, color=color, label=curve.label)
            tail = curve.rounds[-last:]
            ax.hlines(floor, tail[0], tail[-1], colors=[color], linestyles="--", lw=2)
        ax.set(xlabel="round", ylabel=METRIC_LABELS[metric], title=f"floor: last {last} rounds")
        ax.legend()
        ax.grid(alpha=0.3)
    ax_floor = axes[-1]
    shots = [c.shots for c in curves]
    x = inverse_shots(shots)
    grid = np.linspace(0.0, x.max() * 1.05, 50)
    for metric, marker, style in zip(metrics, "os^", ("--", ":", "-."), strict=False):
        ax_floor.scatter(x, floors[metric], color=colors, marker=marker, zorder=3)
        if len(set(x.tolist())) >= 2:
            a, b = fit_floor(shots, floors[metric])
            label = f"{METRIC_LABELS[metric]}: {a:.3f} + {b:.2f} / S"
            ax_floor.plot(grid, a + b * grid, style, color="0.3", label=label)
    ax_floor.set(
        xlabel="1 / shots  (sigma_Q^2 up to a factor)",
        ylabel="loss floor",
        title="Eq. 8: floor = a + b sigma_Q^2",
    )
    ax_floor.legend(fontsize=8)
    ax_floor.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_shots(text: str) -> list[int | None]:
    """'128,512,exact' -> [128, 512, None]."""
    out: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        out.append(None if part == EXACT else int(part))
    return out


def setting_overrides(config: ExperimentConfig, shots: int | None) -> list[str]:
    """--set overrides of one setting: the shots, or every client on the exact path."""
    overrides = [f"tracking.run_name={config.name}-{shots or EXACT}"]
    if shots is None:
        n = config.federation.clients
        return [*overrides, f"clients.counts={{classical: {n}, quantum_enhanced: 0, hybrid: 0}}"]
    return [*overrides, f"quantum.shots={shots}"]


class _Losses(RunObserver):
    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_round(self, record: RoundRecord) -> None:
        self.records.append(record)


def run_setting(
    config_path: Path, overrides: Sequence[str], shots: int | None, tracking_uri: str
) -> Curve:
    """One run of the config at `shots`; its test loss per round."""
    config = load_config(config_path, overrides)
    config = load_config(config_path, [*overrides, *setting_overrides(config, shots)])
    observer = _Losses()
    summary = run_experiment(
        config, tracking_uri=tracking_uri, observer=observer, config_source=str(config_path)
    )
    MlflowClient(tracking_uri).set_tag(summary.run_id, SHOTS_TAG, str(shots or EXACT))
    return Curve(
        shots=shots,
        rounds=tuple(r.round for r in observer.records),
        losses=tuple(_objective(r) for r in observer.records),
        test_losses=tuple(r.test_loss for r in observer.records),
        run_id=summary.run_id,
    )


def log_summary(
    config: ExperimentConfig,
    tracking_uri: str,
    curves: Sequence[Curve],
    floors: Sequence[float],
    test_floors: Sequence[float],
    fit: tuple[float, float],
    plot: Path,
) -> str:
    """A summary run in the config's experiment: floors, fit, plot; the plot on every run.

    Metrics: floor_<shots> (F(w_t)), test_floor_<shots>, fit_intercept, fit_slope.
    """
    tags = {"noise_floor.runs": ",".join(c.run_id for c in curves), SHOTS_TAG: "summary"}
    tracker = Tracker.start(
        tracking_uri, config.tracking.experiment, f"{config.name}-summary", tags
    )
    metrics: dict[str, float] = {"fit_intercept": fit[0], "fit_slope": fit[1]}
    for curve, floor, test in zip(curves, floors, test_floors, strict=True):
        metrics[f"floor_{curve.shots or EXACT}"] = floor
        metrics[f"test_floor_{curve.shots or EXACT}"] = test
    tracker.log_metrics(0, metrics, int(time.time() * 1000), wait=True)
    tracker.log_artifact(plot)
    tracker.end()
    for curve in curves:
        tracker.client.log_artifact(curve.run_id, str(plot))
    return tracker.run_id


def report(
    config: ExperimentConfig, tracking_uri: str, curves: Sequence[Curve], last: int, plot: Path
) -> list[float]:
    """Floors, Eq. 8 fit, plot (written and logged), the table; returns the F(w_t) floors."""
    floors = {m: [loss_floor(getattr(c, m), last) for c in curves] for m in METRIC_LABELS}
    settings = [c.shots for c in curves]
    fit = fit_floor(settings, floors["losses"])
    plot.parent.mkdir(parents=True, exist_ok=True)
    noise_floor_plot(curves, floors, last, plot, f"{config.name}: Eq. 8 loss floor vs shots")
    objective, test = floors["losses"], floors["test_losses"]
    summary = log_summary(config, tracking_uri, curves, objective, test, fit, plot)
    exact = dict(zip(settings, objective, strict=True)).get(None)
    print(f"{'setting':>10} {'1/S':>8} {'floor':>8} {'excess':>9} {'Eq.8 fit':>8} {'test':>8}  run")
    rows = zip(curves, inverse_shots(settings), objective, test, strict=True)
    for curve, x, floor, held_out in rows:
        fitted = fit[0] + fit[1] * x
        excess = f"{floor - exact:+9.5f}" if exact is not None else f"{'-':>9}"
        print(
            f"{curve.label:>10} {x:8.5f} {floor:8.4f} {excess} {fitted:8.4f} {held_out:8.4f}"
            f"  {curve.run_id}"
        )
    print(f"fit: floor = {fit[0]:.4f} + {fit[1]:.3f} / S; plot {plot}; summary run {summary}")
    return objective


def _objective(record: RoundRecord) -> float:
    """F(w_t) of a round (the config must set federation.train_loss)."""
    if record.train_loss is None:
        raise ValueError("the run logged no train_loss: set federation.train_loss: true")
    return record.train_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/noise-floor.yaml"))
    parser.add_argument("--shots", default="128,512,2048,exact", help="settings, in order")
    parser.add_argument("--last", type=int, default=30, help="rounds averaged into the floor")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    parser.add_argument("--tracking-uri", default=None, help="default: as `qfl run`")
    parser.add_argument("--plot", type=Path, default=None, help="default: <runs_dir>/...png")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    tracking_uri = resolve_tracking_uri(
        args.tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"), config.tracking.uri
    )
    try:
        settings = parse_shots(args.shots)
    except ValueError:
        parser.error(f"--shots {args.shots!r}: give shot counts or 'exact', comma-separated")
    curves = []
    with ray_session(config.ray):
        for shots in settings:
            curve = run_setting(args.config, args.overrides, shots, tracking_uri)
            curves.append(curve)
            losses = " ".join(f"{v:.3f}" for v in curve.losses)
            print(f"{curve.label:>10}: {losses}", flush=True)
    plot = args.plot or config.output.runs_dir / f"{config.name}.png"
    floors = report(config, tracking_uri, curves, args.last, plot)
    print("NF " + " ".join(f"{f:.4f}" for f in floors))


if __name__ == "__main__":
    main()
