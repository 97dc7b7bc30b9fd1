"""Supervised pretraining of one base model: mini-batches, early stopping, best weights kept.

LR is trained with FTRL-Proximal, the other models with Adam (paper 5.3), batch 1000.
Early stopping watches the LogLoss of a validation slice of the training rows: the test
rows are never seen here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..evaluation.metrics import logloss
from ..models.base import BaseModel
from .ftrl import FTRL
from .tensors import TensorData, predict


@dataclass
class PretrainSettings:
    epochs: int = 30
    batch_size: int = 1000
    patience: int = 2
    validation_fraction: float = 0.1
    adam_lr: float = 0.001
    l2_embedding: float = 1e-6
    ftrl_alpha: float = 8.0
    ftrl_beta: float = 1.0
    ftrl_l1: float = 0.0
    ftrl_l2: float = 1e-4


@dataclass
class PretrainResult:
    best_epoch: int
    validation_logloss: float
    history: list[dict] = field(default_factory=list)
    optimizer_state: dict = field(default_factory=dict)
    valid_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def make_optimizer(model: BaseModel, settings: PretrainSettings) -> torch.optim.Optimizer:
    if getattr(model, "model_name", "") == "LR":
        return FTRL(model.parameters(), settings.ftrl_alpha, settings.ftrl_beta, settings.ftrl_l1, settings.ftrl_l2)
    # One fused kernel per tensor instead of about eight elementwise passes: ~2.5x faster steps on CPU.
    return torch.optim.Adam(model.parameters(), lr=settings.adam_lr, fused=True)


def embedding_penalty(model: BaseModel, ids: torch.Tensor) -> torch.Tensor:
    """Squared norm of the table rows this batch uses (L2 on embeddings, per sample)."""
    total = torch.zeros((), device=ids.device)
    for name in model.table_names:
        if name == "linear":
            continue
        total = total + getattr(model, name)[ids].pow(2).sum()
    return total / ids.shape[0]


def train_epoch(model: BaseModel, optimizer: torch.optim.Optimizer, data: TensorData, rows: np.ndarray,
                settings: PretrainSettings, generator: torch.Generator, device: torch.device | str = "cpu",
                progress: bool = False, desc: str = "") -> float:
    """One pass over `rows` in shuffled mini-batches; returns the running training loss."""
    model.train()
    order = torch.as_tensor(rows)[torch.randperm(len(rows), generator=generator)]
    bar = tqdm(range(0, len(order), settings.batch_size), desc=desc, disable=not progress, leave=False,
               mininterval=0.5)
    running = 0.0
    for step, start in enumerate(bar, start=1):
        batch, labels = data.batch(order[start:start + settings.batch_size], device)
        loss = F.binary_cross_entropy_with_logits(model(batch), labels)
        objective = loss + settings.l2_embedding * embedding_penalty(model, batch.ids) \
            if settings.l2_embedding else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        running += (loss.item() - running) / min(step, 50)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{running:.4f}")
    return running


def pretrain(
    model: BaseModel,
    data: TensorData,
    rows: np.ndarray,
    settings: PretrainSettings,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = True,
    desc: str = "",
    valid_rows: np.ndarray | None = None,
    optimizer_state: dict | None = None,
) -> PretrainResult:
    """Train `model` on `rows` (a validation slice of them held out), keep the best epoch.

    Warm start (continue training a pretrained model on more rows): pass the earlier run's
    `valid_rows` (held out again, so they stay unseen) and `optimizer_state`; the starting
    weights count as epoch 0, so they are kept if no epoch improves on them.
    """
    warm_start = valid_rows is not None
    if valid_rows is None:
        shuffled = np.random.default_rng(seed).permutation(rows)
        n_valid = max(1, int(round(len(rows) * settings.validation_fraction)))
        valid_rows, train_rows = np.sort(shuffled[:n_valid]), shuffled[n_valid:]
    else:
        train_rows = np.setdiff1d(rows, valid_rows)
    optimizer = make_optimizer(model, settings)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    generator = torch.Generator().manual_seed(seed)
    valid_labels = data.labels[valid_rows].numpy()
    best_loss, best_epoch, best_state, bad_epochs = float("inf"), 0, None, 0
    history = []
    if warm_start:
        best_loss = logloss(valid_labels, predict(model, data, valid_rows, device=device))
        best_state, best_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        history.append({"epoch": 0, "valid_logloss": best_loss})
    for epoch in range(1, settings.epochs + 1):
        running = train_epoch(model, optimizer, data, train_rows, settings, generator, device,
                              progress, f"{desc} epoch {epoch}")
        valid_loss = logloss(valid_labels, predict(model, data, valid_rows, device=device))
        history.append({"epoch": epoch, "train_loss": running, "valid_logloss": valid_loss})
        if valid_loss < best_loss - 1e-5:
            best_loss, best_epoch, bad_epochs = valid_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            best_optimizer = copy.deepcopy(optimizer.state_dict())
        else:
            bad_epochs += 1
            if bad_epochs >= settings.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return PretrainResult(best_epoch, best_loss, history, best_optimizer if best_state is not None else {},
                          valid_rows)
