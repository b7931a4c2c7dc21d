"""M1 benchmark, run only with `pytest -m slow`: mitigated error at most half the unmitigated."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_mitigation_halves_the_error_m1():
    # the script imports the repository's packages: importable whichever way qfl is installed
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mitigation.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    name, ratio = last.split()
    assert name == "M1"
    assert float(ratio) <= 0.5
