"""Figures written as run artifacts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def convergence_plot(
    rounds: Sequence[int], accuracy: Sequence[float], loss: Sequence[float], path: Path, title: str
) -> Path:
    """Test accuracy and test loss per round, side by side, as a PNG at `path`."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.5), constrained_layout=True)
    ax_acc.plot(rounds, accuracy, marker="o")
    ax_acc.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1), title="accuracy")
    ax_loss.plot(rounds, loss, marker="o", color="tab:red")
    ax_loss.set(xlabel="round", ylabel="test loss", title="loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
