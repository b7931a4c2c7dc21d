"""`qfl report` end to end: a real run read back from MLflow by the real CLI, and the page
rendered by headless Chromium with every figure decoded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import QUICKSTART
from mlflow.tracking import MlflowClient

from pipelines.config import load_config
from pipelines.report import (
    REPORT_TAG,
    ExperimentData,
    RunData,
    Series,
    build_report,
    write_report,
)
from pipelines.run import run_experiment

CHROMIUM = "/usr/bin/chromium"
# Appended to a copy of the page: once it has loaded, write into the DOM how many images
# there are and how many decoded to a picture (naturalWidth > 0).
_CHECK = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const out = document.createElement("pre");
  out.id = "qfl-check";
  out.textContent = `images=${images.length} loaded=${loaded}`;
  document.body.appendChild(out);
});
</script>
"""


def _chromium() -> str:
    """The browser, or a skip outside CI (CI installs it: there its absence fails)."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI (.ci/run installs Debian's chromium)")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


def _loaded_images(html_path, tmp_path) -> tuple[int, int]:
    """(images, decoded images) of the page, as headless Chromium reports them."""
    page = tmp_path / "checked.html"
    page.write_text(html_path.read_text().replace("</body>", _CHECK + "</body>"))
    proc = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"images=(\d+) loaded=(\d+)", proc.stdout)
    assert match, f"no check result in the DOM: rc={proc.returncode} {proc.stderr[-2000:]}"
    return int(match[1]), int(match[2])


def _synthetic(rounds: int = 4) -> ExperimentData:
    """Two configurations, two seeds each, with attacks, noise and efficiency metrics."""
    runs = []
    for i, (p2, fraction) in enumerate([(0.01, 0.0), (0.05, 0.2)]):
        for seed in (0, 1):
            accuracy = tuple(0.2 * r + 0.05 * seed - 0.1 * i for r in range(1, rounds + 1))
            steps = tuple(range(1, rounds + 1))
            metrics = {
                "test_accuracy": accuracy,
                "round_seconds": (2.0,) * rounds,
                "time.train_s": (1.2,) * rounds,
                "sign_seconds": (0.1,) * rounds,
                "ledger.bytes": tuple(1000.0 * r for r in steps),
                "energy.kwh": (0.01,) * rounds,
            }
            params = {
                "name": "synthetic",
                "seed": str(seed),
                "model.kind": "vqc",
                "quantum.noise.p2": str(p2),
                "aggregation.rule": "median",
                "attack.kind": "sign_flip" if fraction else "none",
                "attack.fraction": str(fraction),
            }
            runs.append(
                RunData(
                    run_id=f"r{i}{seed}",
                    params=params,
                    metrics={k: Series(steps=steps, values=v) for k, v in metrics.items()},
                )
            )
    return ExperimentData(name="synthetic", experiment_id="0", tracking_uri="mem", runs=tuple(runs))


def test_every_figure_of_a_report_loads_in_headless_chromium(tmp_path):
    files = write_report(build_report(_synthetic()), tmp_path / "report")
    assert len(files.figures) == 6  # convergence, final, noise, attack, round time, ledger
    images, loaded = _loaded_images(files.html, tmp_path)
    assert (images, loaded) == (6, 6)


def test_a_broken_figure_is_caught_by_the_browser_check(tmp_path):
    """The check can fail: a page with one undecodable image reports it."""
    files = write_report(build_report(_synthetic()), tmp_path / "report")
    html = files.html.read_text()
    broken = re.sub(r"base64,[^\"]{40}", "base64,AAAA", html, count=1)
    files.html.write_text(broken)
    images, loaded = _loaded_images(files.html, tmp_path)
    assert (images, loaded) == (6, 5)


@pytest.mark.usefixtures("ray_local", "clean_env")
def test_qfl_report_on_a_real_quickstart_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's artifacts go under the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = load_config(
        QUICKSTART, ["federation.rounds=2", f"output.runs_dir={tmp_path / 'runs'}"]
    )
    summary = run_experiment(config, tracking_uri=uri)
    qfl = shutil.which("qfl")
    assert qfl, "the qfl console script is not installed"
    out = tmp_path / "report"
    proc = subprocess.run(
        [qfl, "report", "quickstart", "--tracking-uri", uri, "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (out / "report.md").read_text()
    # one configuration, one seed, its final accuracy as the run summary says
    assert f"{summary.final_accuracy:.4f} ± 0.0000" in markdown
    assert "| quickstart | classical | 1 | 2 |" in markdown
    for figure in ("convergence", "final_accuracy", "round_time"):
        assert f"](figures/{figure}.png)" in markdown
        assert (out / "figures" / f"{figure}.png").is_file()
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quickstart")
    (report_run,) = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{REPORT_TAG}` = '1'"
    )
    assert report_run.info.run_id in proc.stdout
    logged = {a.path for a in client.list_artifacts(report_run.info.run_id, "report")}
    assert {"report/report.html", "report/report.md"} <= logged
