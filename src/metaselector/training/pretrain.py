"""Supervised pretraining of one base model: mini-batches, early stopping, best weights kept.

LR is trained with FTRL-Proximal, the other models with Adam (paper 5.3), batch 1000.
Early stopping watches the LogLoss of a validation slice of the training rows: the test
rows are never seen here.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.func import functional_call
from tqdm import tqdm

from .. import distributed
from ..evaluation.metrics import logloss
from ..models.base import BaseModel, Batch
from ..models.layers import global_rows
from ..settings import AT_LEAST_ONE, FRACTION_OPEN, NON_NEGATIVE, POSITIVE, Options, setting
from .ftrl import FTRL
from .loop import fit_with_early_stopping
from .objective import embedding_penalty, mean_logloss, rating_error, rating_target, table_penalty
from .row_state import LazyRowAdam
from .state import StateFile
from .tensors import TensorData, predict

L2_SCOPES = ("rows", "table")  # what [pretrain] l2_embedding shrinks (see PretrainSettings.l2_scope)


@dataclass
class PretrainSettings:
    """The [pretrain] table: supervised training of every base model (paper 5.3)."""

    epochs: int = setting(30, AT_LEAST_ONE)
    batch_size: int = setting(1000, AT_LEAST_ONE)
    patience: int = setting(2, AT_LEAST_ONE)
    # One slice of the support rows, shared by every base model, held out for early stopping.
    validation_fraction: float = setting(0.1, FRACTION_OPEN)
    adam_lr: float = setting(0.001, POSITIVE)
    l2_embedding: float = setting(1e-6, NON_NEGATIVE)
    # What l2_embedding shrinks at each step. "rows": the table rows the batch uses, once per
    # sample that uses them (the paper's L2 on embeddings: a frequent id is shrunk often, a rare
    # one seldom). "table": every row of the tables, used or not (weight decay, dense): a rare id
    # is pulled to zero between its samples, so its vector stays small unless its data say
    # otherwise. On ml-latest-small's validation rows MF does better with "table".
    l2_scope: str = setting("rows", Options(L2_SCOPES))
    ftrl_alpha: float = setting(8.0, POSITIVE)
    ftrl_beta: float = setting(1.0, NON_NEGATIVE)
    ftrl_l1: float = setting(0.0, NON_NEGATIVE)
    ftrl_l2: float = setting(1e-4, NON_NEGATIVE)
    # Adam-trained models whose vocabulary has at least this many features update only the table
    # rows a batch uses (lazy Adam, row_state.LazyRowAdam); 0 = never. Dense Adam over a 318k x 6 x 10 FFM
    # table spends most of each step on rows the batch never touched.
    lazy_table_rows: int = setting(100_000, NON_NEGATIVE)
    # The weight of the rating loss of a model that also regresses the raw rating (one with
    # BaseModel.predicts_ratings, e.g. RatingMF): the mean squared error of its standardised
    # rating prediction, added to the LogLoss. Other models ignore it.
    rating_loss: float = setting(1.0, NON_NEGATIVE)


@dataclass
class PretrainResult:
    best_epoch: int
    validation_logloss: float
    history: list[dict] = field(default_factory=list)
    optimizer_state: dict = field(default_factory=dict)
    valid_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


class AdamWithLazyTables:
    """Fused Adam for the dense parameters; for the embedding tables, Adam's update applied only
    to the rows a batch uses (`LazyRowAdam`: exact Adam for a used row; an unused row keeps its
    weights and moments; moments stored only for rows ever used)."""

    def __init__(self, model: BaseModel, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.tables = {n: getattr(model, n) for n in model.table_names}
        dense = [p for p in model.parameters() if all(p is not t for t in self.tables.values())]
        self.dense = torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps, fused=True)
        self.lazy = LazyRowAdam(dict(self.tables), dict.fromkeys(self.tables, lr), betas, eps)
        self._pending: tuple[torch.Tensor, dict[str, torch.Tensor]] | None = None

    def set_row_gradients(self, rows: torch.Tensor, gradients: dict[str, torch.Tensor]) -> None:
        """The next step's table gradients: `gradients[name][i]` belongs to row `rows[i]` (unique)."""
        self._pending = (rows, gradients)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        self._pending = None

    def step(self) -> None:
        self.dense.step()
        if self._pending is not None:
            self.lazy.step(*self._pending)
        self._pending = None

    def state_dict(self) -> dict:
        return {"dense": self.dense.state_dict(), "lazy": self.lazy.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.dense.load_state_dict(state["dense"])
        self.lazy.load_state_dict(state["lazy"])


def make_optimizer(model: BaseModel, settings: PretrainSettings):
    if getattr(model, "model_name", "") == "LR":
        return FTRL(model.parameters(), settings.ftrl_alpha, settings.ftrl_beta, settings.ftrl_l1, settings.ftrl_l2)
    # An L2 over the whole table touches every row at every step: no lazy update can hold it.
    table_l2 = settings.l2_scope == "table" and settings.l2_embedding > 0
    if not table_l2 and settings.lazy_table_rows and model.table_names and \
            getattr(model, model.table_names[0]).shape[0] >= settings.lazy_table_rows:
        return AdamWithLazyTables(model, settings.adam_lr)
    # One fused kernel per tensor instead of about eight elementwise passes: ~2.5x faster steps on CPU.
    return torch.optim.Adam(model.parameters(), lr=settings.adam_lr, fused=True)


def _batch_loss(model: BaseModel, optimizer, batch: Batch, labels: torch.Tensor, settings: PretrainSettings,
                global_size: int, ratings: torch.Tensor | None = None):
    """(loss, objective, finish) of this process's rows of a batch of `global_size` rows: losses
    are summed and divided by the global size, so that over ranks they add up to the batch mean.
    After backward, `finish` sums gradients over ranks and hands a lazy optimizer its rows.
    `ratings`: the rows' standardised ratings, for a model that regresses them too (the
    objective then adds settings.rating_loss times their mean squared error)."""
    outputs = {"with_rating": True} if ratings is not None else {}
    if not isinstance(optimizer, AdamWithLazyTables):
        logits = model(batch, **outputs)
        tables = {n: getattr(model, n) for n in model.table_names}
        if not settings.l2_embedding:
            penalty = 0.0
        elif settings.l2_scope == "table":
            penalty = table_penalty(tables, global_size, model.unpenalised_tables)
        else:
            penalty = embedding_penalty(tables, batch.ids, global_size, model.unpenalised_tables)

        def finish() -> None:
            distributed.sum_gradients(list(model.parameters()))

    else:
        # Only the rows this batch uses (on any rank) enter the graph, as small leaves indexed by local ids.
        used = distributed.union_rows(torch.unique(batch.ids))
        local = torch.searchsorted(used, batch.ids)
        leaves = {n: getattr(model, n).detach()[used].requires_grad_(True) for n in optimizer.tables}
        logits = functional_call(model, leaves, (Batch(local, batch.weights),), outputs)
        penalty = embedding_penalty(leaves, local, global_size, model.unpenalised_tables) \
            if settings.l2_embedding else 0.0

        def finish() -> None:
            dense = [p for p in model.parameters() if all(p is not t for t in optimizer.tables.values())]
            distributed.sum_gradients([*leaves.values(), *dense])
            optimizer.set_row_gradients(used, {n: leaf.grad for n, leaf in leaves.items()})

    rating_term = 0.0
    if ratings is not None:
        logits, predicted = logits
        rating_term = settings.rating_loss * rating_error(predicted, ratings, global_size)
    loss = mean_logloss(logits, labels, global_size)
    return loss, loss + settings.l2_embedding * penalty + rating_term, finish


def train_epoch(model: BaseModel, optimizer: torch.optim.Optimizer, data: TensorData, rows: np.ndarray,
                settings: PretrainSettings, generator: torch.Generator, device: torch.device | str = "cpu",
                progress: bool = False, desc: str = "", ratings: torch.Tensor | None = None) -> float:
    """One pass over `rows` in shuffled mini-batches; returns the running training loss (LogLoss).
    Under torch.distributed every rank draws the same order and takes its share of each batch.
    `ratings`: every row's target, for a model that regresses ratings too (`rating_target`)."""
    model.train()
    order = torch.as_tensor(rows)[torch.randperm(len(rows), generator=generator)]
    bar = tqdm(range(0, len(order), settings.batch_size), desc=desc, disable=not progress, leave=False,
               mininterval=0.5)
    group = distributed.current()
    running = 0.0
    for step, start in enumerate(bar, start=1):
        part = order[start:start + settings.batch_size]
        mine = part[group.rank::group.world]
        batch, labels = data.batch(mine, device)
        rated = ratings[mine].to(device) if ratings is not None else None
        with global_rows(len(part), group.rank, group.world):  # dropout masks of the global batch
            loss, objective, finish = _batch_loss(model, optimizer, batch, labels, settings, len(part), rated)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        finish()
        optimizer.step()
        running += (distributed.sum_scalar(loss.item()) - running) / min(step, 50)
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
    state: StateFile | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    warm_start: bool = False,
) -> PretrainResult:
    """Train `model` on `rows` (a validation slice of them held out), keep the best epoch.

    `valid_rows`: the rows to hold out (e.g. one slice shared by several models); by default a
    random `validation_fraction` of `rows`. Warm start (continue training a pretrained model on
    more rows): pass the earlier run's `valid_rows` (held out again, so they stay unseen) and
    `optimizer_state`; the starting weights count as epoch 0, so they are kept if no epoch
    improves on them (`warm_start`: the same for weights set before the call, with a fresh
    optimizer). `state`: written at every epoch boundary and resumed from if present.
    """
    valid_rows, train_rows = _split_validation(rows, valid_rows, settings.validation_fraction, seed)
    optimizer = make_optimizer(model, settings)
    if optimizer_state:
        optimizer.load_state_dict(optimizer_state)
    learner = _PretrainEpochs(model, optimizer, data, train_rows, valid_rows, settings,
                              torch.Generator().manual_seed(seed), device, progress, desc)
    # A warm start's starting weights are epoch 0, kept if no epoch improves on them.
    stopper = fit_with_early_stopping(learner, settings.epochs, settings.patience, state, tolerance=1e-5,
                                      start_counts=optimizer_state is not None or warm_start, on_epoch=on_epoch)
    model.eval()
    best_optimizer = stopper.best_state["optimizer"] if stopper.best_state else {}
    return PretrainResult(stopper.best_epoch, stopper.best_value, stopper.history, best_optimizer, valid_rows)


class _PretrainEpochs:
    """One base model's pretraining, as a learner of the one training loop (training/loop.py)."""

    def __init__(self, model: BaseModel, optimizer, data: TensorData, train_rows: np.ndarray, valid_rows: np.ndarray,
                 settings: PretrainSettings, generator: torch.Generator, device, progress: bool, desc: str) -> None:
        self.model, self.optimizer, self.data, self.settings = model, optimizer, data, settings
        self.train_rows, self.valid_rows, self.generator = train_rows, valid_rows, generator
        self.device, self.progress, self.desc = device, progress, desc
        self.valid_labels = data.labels[valid_rows].numpy()
        self.ratings = rating_target(model, data, train_rows, settings.rating_loss,
                                     getattr(model, "model_name", type(model).__name__))

    def train_epoch(self, epoch: int) -> dict:
        return {"train_loss": train_epoch(self.model, self.optimizer, self.data, self.train_rows, self.settings,
                                          self.generator, self.device, self.progress, f"{self.desc} epoch {epoch}",
                                          self.ratings)}

    def validate(self, epoch: int) -> tuple[float, dict]:
        return logloss(self.valid_labels, predict(self.model, self.data, self.valid_rows, device=self.device)), {}

    def snapshot(self) -> dict:
        """The weights, and the optimizer state a warm start continues from."""
        return {"model": copy.deepcopy(self.model.state_dict()),
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def restore(self, snapshot: dict) -> None:
        self.model.load_state_dict(snapshot["model"])

    def state_dict(self) -> dict:
        """Weights, optimizer, and both random generators (batch order, dropout)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])


def _split_validation(rows: np.ndarray, valid_rows: np.ndarray | None, fraction: float, seed: int):
    """(validation rows, training rows): the given slice, or a random `fraction` of `rows`."""
    if valid_rows is not None:
        return valid_rows, np.setdiff1d(rows, valid_rows)
    shuffled = np.random.default_rng(seed).permutation(rows)
    n_valid = max(1, int(round(len(rows) * fraction)))
    return np.sort(shuffled[:n_valid]), shuffled[n_valid:]
