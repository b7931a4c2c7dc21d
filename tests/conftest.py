"""Shared fixtures: one Ray for the whole session, repository paths, small configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
QUICKSTART = REPO / "configs" / "quickstart.yaml"


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray (2 CPUs) shared by every test that needs one."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def clean_env(monkeypatch):
    """No tracking URI leaking in from the environment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return os.environ
