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
    lines = proc.stdout.strip().splitlines()
    name, ratio = lines[-1].split()
    assert name == "F1"
    assert 0.0 < float(ratio) < 10.0
    # beside it, qfl against the bare map with qfl's own batched dispatch
    (batched,) = [line for line in lines if line.startswith("qfl / batched bare")]
    assert 0.0 < float(batched.split()[4]) < 10.0
