"""What each process imports: config errors come fast, and actors start light.

A config error, `qfl --help`, the ledger keeper and the aggregator need neither torch nor
qiskit; a runner of a classical model needs no qiskit; none of them needs scipy. Each
import is checked in a fresh interpreter, as a new actor process would run it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

HEAVY = ("torch", "qiskit", "qiskit_aer", "scipy")


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("pipelines.cli", HEAVY),
        ("pipelines.config", HEAVY),
        ("actors.ledger_keeper", HEAVY),
        ("actors.aggregator", HEAVY),
        ("actors.client_runner", ("qiskit", "qiskit_aer", "scipy")),
    ],
)
def test_a_module_imports_none_of_the_heavy_libraries_it_does_not_use(module, absent):
    probe = f"import sys, {module}\nprint(','.join(m for m in {absent!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_a_config_still_validates_its_model_and_quantum_sections(tmp_path):
    """The light config models are the ones the run uses (not copies that drift)."""
    from federated.config import ModelConfig, TrainConfig
    from federated.models import build_model
    from pipelines.config import load_config
    from quantum.config import QuantumConfig
    from quantum.layer import QuantumLayer

    config = load_config(REPO / "configs" / "digits-hybrid.yaml", [])
    assert isinstance(config.model, ModelConfig) and isinstance(config.train, TrainConfig)
    assert isinstance(config.quantum, QuantumConfig)
    model = build_model(config.model, (64,), 10, seed=0, quantum=config.quantum)
    assert any(isinstance(m, QuantumLayer) for m in model.modules())
