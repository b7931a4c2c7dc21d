"""Q1 benchmark, run only with `pytest -m slow`."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_qnn_exact_prints_q1_ratio():
    script = REPO / "benchmarks" / "qnn_exact.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--repeats", "1", "--batch", "4"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, ratio = proc.stdout.strip().splitlines()[-1].split()
    assert name == "Q1"
    assert float(ratio) > 1.0
