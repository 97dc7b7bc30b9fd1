"""Meta-training a MetaSGDEnsemble (Algorithm 1 with Meta-SGD), adapting only the rows a user
touches.

Per episode of m users:
  1. R = the sorted feature ids the episode's support and query samples use (over every rank).
  2. Every embedding table T (and its Meta-SGD rates A) is gathered to T[R], A[R]: small leaf
     tensors. Dense parameters (MLPs, biases) are used as they are.
  3. The users are gathered as for meta-testing (`user_rows.gather_users`); each user's own
     rows are taken from those leaves, the support loss differentiated (create_graph for second
     order), theta_u = theta - alpha * grad, and the query loss backpropagated. Untouched rows
     have zero support gradient, so this is exactly the dense update restricted to R.
  4. The outer step: dense parameters by Adam, tables (weights and Meta-SGD rates) by
     LazyRowAdam on the rows in R: exactly Adam's update for those rows; rows not in R keep
     their values and moments (lazy moments), where dense Adam would keep moving them.
Under torch.distributed each rank adapts its share of an episode's users; the rows are the
union over ranks, gradients are summed over ranks, and every rank takes the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed
from ..training.loop import fit_with_early_stopping
from ..training.row_state import LazyRowAdam
from ..training.state import StateFile
from ..training.tensors import TensorData
from .meta_settings import MetaHistory
from .metasgd import MetaSGDEnsemble
from .tasks import UserTask
from .user_rows import gather_users


class MetaTrainer:
    """The outer loop over a MetaSGDEnsemble: its optimizers, episodes, epochs and resume."""

    def __init__(self, module: MetaSGDEnsemble) -> None:
        self.module = module
        s, params, alpha = module.settings, module.params, module.alpha
        dense, tables = module.dense, module.tables
        groups = [
            {"params": [params[n] for n in dense if not n.startswith("selector.")], "lr": s.outer_lr},
            {"params": [params[n] for n in dense if n.startswith("selector.")], "lr": s.selector_outer_lr},
        ]
        targets: dict = {n: params[n] for n in tables}
        lrs = {n: s.selector_outer_lr if n.startswith("selector.") else s.outer_lr for n in tables}
        if s.learn_inner_lr:
            alpha_lr = s.alpha_outer_lr or s.outer_lr
            groups.append({"params": [alpha[n] for n in dense], "lr": alpha_lr})
            targets.update({"alpha:" + n: alpha[n] for n in tables})
            lrs.update({"alpha:" + n: alpha_lr for n in tables})
        self.dense_optimizer = torch.optim.Adam([g for g in groups if g["params"]])
        self.table_optimizer = LazyRowAdam(targets, lrs)

    # ---- one episode -------------------------------------------------------------------
    def meta_step(self, data: TensorData, tasks: Sequence[UserTask]) -> float:
        """One episode: adapt each user on support, backpropagate query loss, outer step."""
        rows, leaves, alphas, loss = self.episode_backward(data, tasks)
        self._outer_step(rows, leaves, alphas)
        return loss

    def _episode_leaves(self, rows: torch.Tensor) -> tuple[dict, dict]:
        """Table rows (and their rates) gathered into leaf tensors; dense ones stay shared."""
        m, learn = self.module, self.module.settings.learn_inner_lr
        params = {n: m.params[n].detach()[rows].requires_grad_(True) for n in m.tables}
        alphas = {n: m.alpha[n].gather(rows).requires_grad_(learn) for n in m.tables}
        params.update({n: m.params[n] for n in m.dense})
        alphas.update({n: m.alpha[n] for n in m.dense})
        return params, alphas

    def episode_backward(self, data: TensorData, tasks: Sequence[UserTask]) -> tuple:
        """Accumulate the meta-gradient of the mean query loss; return the episode's rows, the
        table leaves (whose .grad holds the rows' gradients) and the mean loss."""
        m = self.module
        mine = distributed.shard(list(tasks))
        own = []
        if mine:  # a rank can have no user in an episode; it still joins the exchange below
            users = gather_users(data, [t.support for t in mine], [t.query for t in mine], m.vocabulary, m.device)
            own = [users.user(k) for k in range(len(mine))]
        local = [r for r, *_ in own]
        rows = distributed.union_rows(torch.unique(torch.cat(local)) if local else
                                      torch.empty(0, dtype=torch.int64, device=m.device))
        leaves, alphas = self._episode_leaves(rows)
        total = 0.0
        # each user's profile, from their support rows only
        profiles = m.profile.features(data, [t.support for t in mine]).to(m.device) \
            if m.profile is not None and mine else [None] * len(own)
        for (user_rows, s_batch, s_labels, q_batch, q_labels), profile in zip(own, profiles, strict=True):
            position = torch.searchsorted(rows, user_rows)
            params = {n: (v[position] if n in m.ensemble.tables else v) for n, v in leaves.items()}
            rates = {n: (v[position] if n in m.ensemble.tables else v) for n, v in alphas.items()}
            adapted = m.adapt(params, rates, s_batch, s_labels, create_graph=not m.settings.first_order,
                              profile=profile)
            query_loss = m.ensemble.loss(adapted, q_batch, q_labels, model_loss=m.settings.model_loss,
                                         profile=profile)
            (query_loss / len(tasks)).backward()
            total += query_loss.item()
        if distributed.current().active:
            holders = [leaves[n] for n in m.tables] + [alphas[n] for n in m.tables] + \
                [m.params[n] for n in m.dense] + [m.alpha[n] for n in m.dense]
            distributed.sum_gradients([h for h in holders if h.requires_grad])
        return rows, leaves, alphas, distributed.sum_scalar(total) / len(tasks)

    def _outer_step(self, rows: torch.Tensor, leaves: dict, alphas: dict) -> None:
        gradients = {}
        for n in self.module.tables:
            for key, leaf in ((n, leaves[n]), ("alpha:" + n, alphas[n])):
                if leaf.grad is not None:
                    gradients[key] = leaf.grad
        self.dense_optimizer.step()
        self.table_optimizer.step(rows, gradients)
        self.dense_optimizer.zero_grad(set_to_none=True)

    # ---- epochs --------------------------------------------------------------------------
    def fit(self, data: TensorData, train_tasks: list[UserTask], valid_tasks: list[UserTask], seed: int,
            progress: bool = True, desc: str = "MetaSelector", criterion: Callable[[], float] | None = None,
            state: StateFile | None = None) -> MetaHistory:
        """Episodes of m users, epochs over the users; early stopping on `criterion()` (lower is
        better) if given, else on the query LogLoss of the held-out users `valid_tasks` (which is
        recorded either way). `state`: written at every epoch boundary, resumed from if present."""
        epochs = _Epochs(self, data, train_tasks, valid_tasks, np.random.default_rng(seed), progress, desc, criterion)
        s = self.module.settings
        stopper = fit_with_early_stopping(epochs, s.epochs, s.patience, state)
        return MetaHistory(stopper.best_epoch, stopper.best_value, stopper.history)


class _Epochs:
    """MetaTrainer.fit's learner for the one training loop (training/loop.py)."""

    def __init__(self, trainer: MetaTrainer, data, train_tasks, valid_tasks, rng, progress, desc, criterion) -> None:
        self.trainer, self.data, self.train_tasks, self.valid_tasks = trainer, data, train_tasks, valid_tasks
        self.rng, self.progress, self.desc, self.criterion = rng, progress, desc, criterion

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the users (at most `max_episodes` episodes); the mean query loss."""
        m = self.trainer.module.settings.users_per_episode
        order = self.rng.permutation(len(self.train_tasks))
        if self.trainer.module.settings.max_episodes:
            order = order[:self.trainer.module.settings.max_episodes * m]
        losses = []
        bar = tqdm(range(0, len(order), m), desc=f"{self.desc} epoch {epoch}", disable=not self.progress,
                   leave=False, mininterval=0.5)
        for start in bar:
            losses.append(self.trainer.meta_step(self.data, [self.train_tasks[i] for i in order[start:start + m]]))
            if len(losses) % 10 == 0:
                bar.set_postfix(query_loss=f"{np.mean(losses[-50:]):.4f}")
        return {"train_query_loss": float(np.mean(losses)) if losses else float("nan")}

    def validate(self, epoch: int) -> tuple[float, dict]:
        record = {}
        if self.valid_tasks:
            record["held_out_users_query_logloss"] = self.trainer.module.query_loss(self.data, self.valid_tasks)
        if self.criterion is not None:
            return self.criterion(), record
        return record.get("held_out_users_query_logloss", -float(epoch)), record

    def snapshot(self) -> dict:
        return self.trainer.module.snapshot()

    def restore(self, snapshot: dict) -> None:
        self.trainer.module.restore(snapshot)

    def state_dict(self) -> dict:
        """Weights, rates, both optimizers and the episode order's generator."""
        t = self.trainer
        return {**t.module.snapshot(), "dense_optimizer": t.dense_optimizer.state_dict(),
                "table_optimizer": t.table_optimizer.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        t = self.trainer
        t.module.restore(state)
        t.dense_optimizer.load_state_dict(state["dense_optimizer"])
        t.table_optimizer.load_state_dict(state["table_optimizer"])
        self.rng.bit_generator.state = state["rng"]
