"""L1 benchmark, run only with `pytest -m slow`: it prints its figure and is checked for shape."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_ledger_verify_prints_l1_ratio():
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "ledger_verify.py"), "--updates", "100"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"L1 \d+\.\d+", last), last
    assert 0.0 < float(last.split()[1]) < 10.0
