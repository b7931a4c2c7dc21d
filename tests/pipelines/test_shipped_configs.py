"""Every experiment config in configs/ is valid; the MNIST one runs on local IDX files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from pipelines.config import load_config
from qfl.errors import ConfigError

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _write_idx(path: Path, magic: int, arr: np.ndarray) -> None:
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, rng: np.random.Generator) -> Path:
    """Tiny MNIST-format files: 28x28 images whose bright row encodes the label."""
    root.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", 240), ("t10k", 80)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 40, (n, 28, 28))
        images[np.arange(n), 2 * labels + 4, :] = 255
        _write_idx(root / f"{stem}-images-idx3-ubyte", 0x803, images)
        _write_idx(root / f"{stem}-labels-idx1-ubyte", 0x801, labels)
    return root


def test_the_shipped_experiments_are_there():
    names = {p.stem for p in CONFIGS}
    assert {
        "digits-hybrid",
        "digits-hybrid-kinds",
        "noise-sweep",
        "shots-sweep",
        "byzantine",
        "outage",
        "dp",
        "breast-cancer-vqc",
        "mnist-hybrid",
        "noise-floor",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_validates(path, tmp_path):
    overrides = [f"data.root={tmp_path}"] if path.stem.startswith("mnist") else []
    config = load_config(path, overrides)
    assert config.name == path.stem  # MLflow runs and reports carry the file's name


def test_mnist_hybrid_without_its_files_names_the_folder():
    with pytest.raises(ConfigError, match="data.root"):
        load_config(REPO / "configs" / "mnist-hybrid.yaml", ["data.root=/no/such/mnist"])


def test_mnist_hybrid_runs_on_local_idx_files(tmp_path, ray_local, clean_env):
    from pipelines.run import run_experiment

    root = _fake_mnist(tmp_path / "mnist", np.random.default_rng(0))
    config = load_config(
        REPO / "configs" / "mnist-hybrid.yaml",
        [
            f"data.root={root}",
            "federation.rounds=3",
            "train.epochs=5",
            "data.partition=iid",
            "federation.clients=4",
            "federation.clients_per_round=4",
            "ledger.enabled=false",
            f"output.runs_dir={tmp_path / 'runs'}",
        ],
    )
    summary = run_experiment(config, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert summary.rounds == 3
    assert summary.final_accuracy > 0.5  # ten classes (chance 0.1), the label a bright row
