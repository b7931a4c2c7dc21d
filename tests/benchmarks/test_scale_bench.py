"""F2 benchmark, run only with `pytest -m slow`: 1,000 and 10,000 registered clients."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_scale_prints_f2_peak_memory_and_time_ratio():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "scale.py")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    name, peak_gb, ratio = proc.stdout.strip().splitlines()[-1].split()
    assert name == "F2"
    assert float(peak_gb) < 4.0  # the target: driver and actors together
    assert float(ratio) <= 1.2  # round time flat in the number of registered clients
