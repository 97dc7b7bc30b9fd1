"""MetaSelector-Simplified (end of paper section 4.2): frozen base models, episodic phi.

For each user of an episode, lambda_u is the mean of S(x; phi) over the support samples;
the query prediction is sum_k lambda_u[k] * p_k(x) with the frozen models' p_k, and the
query loss trains phi. At test time lambda_u comes from the user's training data.
Because the base models are frozen, their probabilities are computed once for all rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..training.loop import SelectorSnapshots, fit_with_early_stopping
from ..training.state import StateFile
from ..training.tensors import TensorData
from .ensemble import EPS
from .meta_settings import MetaHistory
from .selector import Selector
from .tasks import UserTask


class SimplifiedSelector(SelectorSnapshots):
    def __init__(self, selector: Selector, base_probabilities: torch.Tensor, lr: float, device="cpu") -> None:
        self.selector = selector.to(device)
        self.base = base_probabilities.float()  # [N_rows, K] for every row of the dataset
        self.optimizer = torch.optim.Adam(self.selector.parameters(), lr=lr)
        self.device = device

    def _user_weights(self, data: TensorData, support_rows: list[np.ndarray]) -> torch.Tensor:
        """lambda_u [users, K]: the selector's mean distribution over each user's support."""
        rows = np.concatenate(support_rows)
        owner = torch.repeat_interleave(torch.arange(len(support_rows)),
                                        torch.as_tensor([len(r) for r in support_rows]))
        batch, _ = data.batch(rows, self.device)
        weights = self.selector(batch, self.base[rows].to(self.device))
        owner = owner.to(weights.device)
        sums = torch.zeros(len(support_rows), weights.shape[1], device=weights.device).index_add(0, owner, weights)
        return sums / torch.bincount(owner, minlength=len(support_rows)).clamp(min=1)[:, None]

    def _loss(self, data: TensorData, tasks: list[UserTask], eval_rows: list[np.ndarray]) -> torch.Tensor:
        lam = self._user_weights(data, [t.support for t in tasks])
        rows = np.concatenate(eval_rows)
        owner = torch.as_tensor(np.repeat(np.arange(len(tasks)), [len(r) for r in eval_rows]), device=lam.device)
        p = (lam[owner] * self.base[rows].to(self.device)).sum(dim=1).clamp(EPS, 1 - EPS)
        return F.binary_cross_entropy(p, data.labels[rows].to(self.device))

    @torch.no_grad()
    def predict(self, data: TensorData, tasks: list[UserTask], eval_rows: list[np.ndarray]) -> list[np.ndarray]:
        self.selector.eval()
        out = []
        for start in range(0, len(tasks), 256):
            part = tasks[start:start + 256]
            lam = self._user_weights(data, [t.support for t in part])
            for u, rows in enumerate(eval_rows[start:start + 256]):
                out.append((self.base[rows] * lam[u].cpu()).sum(dim=1).double().numpy())
        return out

    def fit(self, data: TensorData, train_tasks: list[UserTask], valid_tasks: list[UserTask], users_per_episode: int,
            epochs: int, patience: int, seed: int, progress: bool = True, max_episodes: int = 0,
            state: StateFile | None = None) -> MetaHistory:
        """Episodes of `users_per_episode` users; `max_episodes` caps an epoch (0: every user once),
        the same budget MetaSelector gets; early stopping on held-out users' query LogLoss (the
        last epoch without them). `state`: written at epoch boundaries and resumed from."""
        self._run = (data, train_tasks, valid_tasks, users_per_episode, max_episodes, progress,
                     np.random.default_rng(seed))
        stopper = fit_with_early_stopping(self, epochs, patience, state)
        return MetaHistory(stopper.best_epoch, stopper.best_value, stopper.history)

    # ---- the one training loop's learner (training/loop.py) ----------------------------------
    def train_epoch(self, epoch: int) -> dict:
        data, tasks, _, per_episode, max_episodes, progress, rng = self._run
        self.selector.train()
        order = rng.permutation(len(tasks))
        if max_episodes:
            order = order[:max_episodes * per_episode]
        for start in tqdm(range(0, len(order), per_episode), desc=f"Simplified epoch {epoch}", disable=not progress,
                          leave=False):
            part = [tasks[i] for i in order[start:start + per_episode]]
            loss = self._loss(data, part, [t.query for t in part])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return {}

    def validate(self, epoch: int) -> tuple[float, dict]:
        data, _, valid_tasks, *_ = self._run
        if not valid_tasks:  # no held-out users: keep the last epoch
            return -float(epoch), {}
        with torch.no_grad():
            self.selector.eval()
            return float(self._loss(data, valid_tasks, [t.query for t in valid_tasks])), {}

    def state_dict(self) -> dict:
        return {"selector": self.selector.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self._run[-1].bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.selector.load_state_dict(state["selector"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._run[-1].bit_generator.state = state["rng"]
