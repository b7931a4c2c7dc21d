"""F1 benchmark, run only with `pytest -m slow`: it prints its figure and is checked for shape."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_round_overhead_prints_f1_ratio():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "round_overhead.py"), "--rounds", "5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    name, ratio = last.split()
    assert name == "F1"
    assert 0.0 < float(ratio) < 10.0
