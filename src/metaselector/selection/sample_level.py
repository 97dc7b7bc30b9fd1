"""The sample-level selector of the paper (section 5.2).

Base models are pretrained on 75% of the training data; each of the other 25% is labelled
with the index of the model whose LogLoss on it is lowest; an MLP (400-400-400) over the
features and the K predictions learns that label; at test time its predicted distribution
weights the base models.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..training.early_stopping import EarlyStopping
from ..training.tensors import TensorData
from .selector import Selector


def best_model_labels(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Index of the model with the lowest LogLoss on each sample [N]."""
    from ..evaluation.metrics import clip

    p = clip(probabilities)
    losses = -(labels[:, None] * np.log(p) + (1 - labels[:, None]) * np.log(1 - p))
    return losses.argmin(axis=1)


def fit_sample_selector(selector: Selector, data: TensorData, rows: np.ndarray, base: torch.Tensor,
                        epochs: int, lr: float, batch_size: int, seed: int, progress: bool = True) -> dict:
    """Train `selector` to classify each row's best model; early stop on a 10% slice."""
    rng = np.random.default_rng(seed)
    targets = torch.as_tensor(best_model_labels(base[rows].double().numpy(), data.labels[rows].double().numpy()))
    order = rng.permutation(len(rows))
    n_valid = max(1, len(rows) // 10)
    valid, train = order[:n_valid], order[n_valid:]
    optimizer = torch.optim.Adam(selector.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def valid_loss() -> float:
        selector.eval()
        with torch.no_grad():
            batch, _ = data.batch(rows[valid])
            return float(F.cross_entropy(selector.scores(batch, base[rows[valid]].float()), targets[valid]))

    stopper = EarlyStopping(patience=2)

    def snapshot() -> dict:
        return copy.deepcopy(selector.state_dict())

    stopper.update(0, valid_loss(), snapshot)
    for epoch in range(1, epochs + 1):
        selector.train()
        shuffled = torch.as_tensor(train)[torch.randperm(len(train), generator=generator)]
        for start in tqdm(range(0, len(shuffled), batch_size), desc=f"Sample-level epoch {epoch}",
                          disable=not progress, leave=False):
            index = shuffled[start:start + batch_size].numpy()
            batch, _ = data.batch(rows[index])
            loss = F.cross_entropy(selector.scores(batch, base[rows[index]].float()), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if stopper.update(epoch, valid_loss(), snapshot):
            break
    selector.load_state_dict(stopper.best_state)
    selector.eval()
    return {"best_epoch": stopper.best_epoch, "validation_cross_entropy": stopper.best_value,
            "label_shares": np.bincount(targets.numpy(), minlength=base.shape[1]).tolist()}


@torch.no_grad()
def predict_sample_selector(selector: Selector, data: TensorData, rows: np.ndarray, base: torch.Tensor) -> np.ndarray:
    out = []
    for start in range(0, len(rows), 20000):
        part = rows[start:start + 20000]
        batch, _ = data.batch(part)
        weights = selector(batch, base[part].float())
        out.append((weights * base[part].float()).sum(dim=1).double().numpy())
    return np.concatenate(out)
