"""Local training on one client and evaluation of a global model.

`local_train` is the client's whole job in a classical round: start from the
global weights, run `epochs` of minibatch optimisation on the local data
(FedAvg; with `prox_mu > 0` the FedProx objective
F_k(w) + mu/2 ||w - w_t||^2 of Li et al. 2020), and return the update
Delta w_k = w_k - w_t. Every random draw (batch order, dropout) comes from
`seed`, so a client's update is a function of (weights, data, config, seed).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from federated.config import TrainConfig
from federated.data import ArrayDataset
from federated.models import get_flat, set_flat


class LocalResult(BaseModel):
    """What local training produced: the update and how it went."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    delta: np.ndarray  # (P,) float32, w_k - w_t
    num_samples: int
    loss: float  # mean training loss over the last local epoch
    seconds: float


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over `params`."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def local_train(
    model: nn.Module,
    data: ArrayDataset,
    global_weights: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    prox_mu: float = 0.0,
) -> LocalResult:
    """Train `model` from `global_weights` on `data`; return Delta w = w_local - w_global."""
    start = time.perf_counter()
    set_flat(model, global_weights)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    anchors = [p.detach().clone() for p in model.parameters()] if prox_mu > 0 else []
    optimizer = make_optimizer(model.parameters(), config)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    model.train()
    epoch_loss = float("nan")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout masks
        for _ in range(config.epochs):
            order = torch.randperm(len(y), generator=generator)
            total, count = 0.0, 0
            for batch in order.split(config.batch_size):
                xb, yb = x[batch], y[batch]  # (b, ...), (b,)
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                objective = loss + _penalty(model)
                if anchors:
                    objective = objective + _proximal(model, anchors, prox_mu)
                objective.backward()
                optimizer.step()
                total += loss.item() * len(yb)
                count += len(yb)
            epoch_loss = total / max(count, 1)
    delta = get_flat(model) - global_weights
    return LocalResult(
        delta=delta.astype(np.float32),
        num_samples=len(y),
        loss=epoch_loss,
        seconds=time.perf_counter() - start,
    )


def _penalty(model: nn.Module) -> torch.Tensor | float:
    """The model's own regulariser (Eq. 2's gamma and beta terms for quantum models)."""
    penalty = getattr(model, "penalty", None)
    return penalty() if callable(penalty) else 0.0


def _proximal(model: nn.Module, anchors: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx term mu/2 * ||w - w_t||^2."""
    sq = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors, strict=True))
    return 0.5 * mu * sq


class Evaluation(BaseModel):
    """Loss and accuracy of a model on a dataset."""

    model_config = ConfigDict(frozen=True)

    loss: float
    accuracy: float


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1024) -> Evaluation:
    """Mean cross-entropy and accuracy of `model` on `data`."""
    model.eval()
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])  # (b, classes)
        target = y[start : start + batch_size]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == target).sum())
    n = max(len(y), 1)
    return Evaluation(loss=loss_sum / n, accuracy=correct / n)
