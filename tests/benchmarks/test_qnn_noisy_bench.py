"""Q2 benchmark, run only with `pytest -m slow`: it prints its figure and is checked for shape."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_qnn_noisy_prints_q2_ratio():
    # the script imports the repository's packages: importable whichever way qfl is installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "qnn_noisy.py"),
            "--batch",
            "4",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    name, ratio = last.split()
    assert name == "Q2"
    assert float(ratio) > 1.0
