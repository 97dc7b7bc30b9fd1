"""The sample-level selector of the paper (section 5.2).

Base models are pretrained on 75% of the training data; each of the other 25% is labelled
with the index of the model whose LogLoss on it is lowest; an MLP (400-400-400) over the
features and the K predictions learns that label; at test time its predicted distribution
weights the base models.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..training.loop import SelectorSnapshots, fit_with_early_stopping
from ..training.state import StateFile
from ..training.tensors import TensorData
from .selector import Selector


def best_model_labels(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Index of the model with the lowest LogLoss on each sample [N]."""
    from ..evaluation.metrics import clip

    p = clip(probabilities)
    losses = -(labels[:, None] * np.log(p) + (1 - labels[:, None]) * np.log(1 - p))
    return losses.argmin(axis=1)


def fit_sample_selector(selector: Selector, data: TensorData, rows: np.ndarray, base: torch.Tensor,
                        epochs: int, lr: float, batch_size: int, seed: int, progress: bool = True,
                        state: StateFile | None = None) -> dict:
    """Train `selector` to classify each row's best model; early stop on a 10% slice. `state`:
    written at epoch boundaries and resumed from."""
    learner = _SampleSelectorEpochs(selector, data, rows, base, lr, batch_size, seed, progress)
    stopper = fit_with_early_stopping(learner, epochs, patience=2, state=state)
    selector.eval()
    return {"best_epoch": stopper.best_epoch, "validation_cross_entropy": stopper.best_value,
            "label_shares": np.bincount(learner.targets.numpy(), minlength=base.shape[1]).tolist()}


class _SampleSelectorEpochs(SelectorSnapshots):
    """The sample-level selector's learner for the one training loop (training/loop.py)."""

    def __init__(self, selector, data, rows, base, lr, batch_size, seed, progress) -> None:
        self.selector, self.data, self.rows, self.base = selector, data, rows, base
        self.batch_size, self.progress = batch_size, progress
        self.targets = torch.as_tensor(best_model_labels(base[rows].double().numpy(),
                                                         data.labels[rows].double().numpy()))
        order = np.random.default_rng(seed).permutation(len(rows))
        n_valid = max(1, len(rows) // 10)
        self.valid, self.train = order[:n_valid], order[n_valid:]
        self.optimizer = torch.optim.Adam(selector.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)

    def _loss(self, index: np.ndarray) -> torch.Tensor:
        batch, _ = self.data.batch(self.rows[index])
        return F.cross_entropy(self.selector.scores(batch, self.base[self.rows[index]].float()), self.targets[index])

    def train_epoch(self, epoch: int) -> dict:
        self.selector.train()
        shuffled = torch.as_tensor(self.train)[torch.randperm(len(self.train), generator=self.generator)]
        for start in tqdm(range(0, len(shuffled), self.batch_size), desc=f"Sample-level epoch {epoch}",
                          disable=not self.progress, leave=False):
            loss = self._loss(shuffled[start:start + self.batch_size].numpy())
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {}

    def validate(self, epoch: int) -> tuple[float, dict]:
        self.selector.eval()
        with torch.no_grad():
            return float(self._loss(self.valid)), {}

    def state_dict(self) -> dict:
        return {"selector": self.selector.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.selector.load_state_dict(state["selector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


@torch.no_grad()
def predict_sample_selector(selector: Selector, data: TensorData, rows: np.ndarray, base: torch.Tensor) -> np.ndarray:
    out = []
    for start in range(0, len(rows), 20000):
        part = rows[start:start + 20000]
        batch, _ = data.batch(part)
        weights = selector(batch, base[part].float())
        out.append((weights * base[part].float()).sum(dim=1).double().numpy())
    return np.concatenate(out)
