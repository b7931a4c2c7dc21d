"""Q3 benchmark, run only with `pytest -m slow`: it prints its table and is checked for shape."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_qnn_scale_prints_q3_qubits():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "qnn_scale.py"), "--max-qubits", "12"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["n", "seconds", "peak_MB"]
    name, qubits = lines[-1].split()
    assert name == "Q3"
    assert int(qubits) >= 12
