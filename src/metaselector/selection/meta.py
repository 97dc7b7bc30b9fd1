"""MetaSelector (Algorithm 1 with Meta-SGD), adapting only the rows a user touches.

Per episode of m users:
  1. R = the sorted feature ids the episode's support and query samples use.
  2. Every embedding table T (and its Meta-SGD rates A) is gathered to T[R], A[R]: small
     leaf tensors. Dense parameters (MLPs, biases) are used as they are.
  3. For each user, their own rows are gathered from those leaves and their batch ids
     remapped, the support loss is differentiated (create_graph for second order),
     theta_u = theta - alpha * grad, and the query loss is backpropagated. Untouched rows
     have zero support gradient, so this is exactly the dense update restricted to R.
  4. The outer step: dense parameters by Adam, tables (weights and Meta-SGD rates) by
     LazyRowAdam on the rows in R: exactly Adam's update for those rows; rows not in R keep
     their values and moments (lazy moments), where dense Adam would keep moving them.
The tables' Meta-SGD rates and Adam moments are RowStores: stored only for rows an episode
has touched (every other row's rate is the initial one), so the state grows with the data
seen, not with the vocabulary.
Meta-testing reuses steps 1 to 3 without the outer step.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed
from ..models.base import Batch
from ..settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Interval, Options, setting
from ..training.early_stopping import EarlyStopping
from ..training.row_state import LazyRowAdam, RowStore
from ..training.state import StateFile
from ..training.tensors import TensorData
from .ensemble import Ensemble
from .padding import padded_rows
from .tasks import UserTask


@dataclass
class MetaSettings:
    """The [meta] table: MetaSelector's meta-training and meta-testing (paper 5.3)."""

    users_per_episode: int = setting(10, AT_LEAST_ONE)
    inner_steps: int = setting(1, AT_LEAST_ONE)
    inner_lr: float = setting(0.001, POSITIVE)  # Meta-SGD alpha's initial value
    outer_lr: float = setting(0.0001, POSITIVE)  # beta = alpha / 10
    selector_outer_lr: float = setting(0.001, POSITIVE)
    # Meta-SGD rates learn faster than theta: 1e-2 won on held-out users' query LogLoss over
    # 1e-4 (= outer_lr, the paper's single beta), 1e-3 and 5e-2. 0 means: the same as outer_lr.
    alpha_outer_lr: float = setting(0.01, NON_NEGATIVE)
    epochs: int = setting(8, AT_LEAST_ONE)
    patience: int = setting(2, AT_LEAST_ONE)
    first_order: bool = setting(False)
    learn_inner_lr: bool = setting(True)
    max_episodes: int = setting(0, NON_NEGATIVE)  # per epoch; 0 = every meta-training user once
    # Training users held out of meta-training; their query LogLoss is recorded every epoch.
    validation_users: float = setting(0.1, Interval(0, 1, hi_open=True))
    # What stops meta-training (and picks its best epoch). "held-out-rows": the test-time setup
    # itself on rows no model has trained on: the selector and theta change applied to the
    # single models, each checked user adapting on their other training rows and predicting
    # their rows of the base models' shared validation slice (which meta-training never sees).
    # "held-out-users": the query LogLoss of held-out training users, with the models
    # meta-training uses (the paper's meta-validation).
    stop_on: str = setting("held-out-rows", Options(("held-out-rows", "held-out-users")))
    check_users: int = setting(2000, AT_LEAST_ONE)  # users sampled for "held-out-rows"
    selector_hidden: list[int] = setting([200, 200, 200], AT_LEAST_ONE, non_empty=True)
    # "global-mixture": the selector starts from the best single blend of the base models on the
    # meta-training query rows (the Global Blend row); "uniform": from equal weights. With early
    # stopping on the test-time setup, meta-training is kept only where it beats its start, so
    # the start should be the best fixed blend.
    selector_start: str = setting("global-mixture", Options(("uniform", "global-mixture")))
    selector_uses_predictions: bool = setting(True)  # chosen by held-out users' query LogLoss
    # What each base model's parameters descend, in the inner step and the outer step: "mixture"
    # (the paper: the mixture's LogLoss) or "own" (the model's own LogLoss; the selector still
    # descends the mixture's). See Ensemble.loss. "own" won on held-out rows (README, Findings).
    model_loss: str = setting("own", Options(("mixture", "own")))
    # Where the base models' theta and Meta-SGD rates start meta-training: "pretrained" (the
    # paper) or "adapted": from each model's own per-user-adaptation meta-training (the model
    # alone, no selector; the "<model> + per-user adaptation" rows), so that the joint stage
    # starts from every model adapting well and is kept only where the selector adds to it.
    # "adapted" won on held-out rows (README, Findings).
    model_start: str = setting("adapted", Options(("pretrained", "adapted")))
    # Which rows the meta-learned base models are pretrained on: "support" keeps the query sets
    # out-of-sample for the selector (the single models are then these models trained on, warm,
    # over all training rows); "train" uses all training rows.
    pretrain_on: str = setting("support", Options(("support", "train")))
    # With pretrain_on = "support": at test time every selector is applied to the single models
    # (support models continued on all training rows), carrying over meta-training's theta change.
    refit_base_models: bool = setting(True)


@dataclass
class MetaHistory:
    best_epoch: int = 0
    best_validation: float = float("inf")
    epochs: list[dict] = field(default_factory=list)


def _key(name: str) -> str:
    return name.replace(".", "__")


class MetaLearner:
    """theta, phi and alpha of an Ensemble, meta-trained and adapted sparsely per user."""

    def __init__(self, ensemble: Ensemble, settings: MetaSettings, device: torch.device | str = "cpu") -> None:
        self.ensemble = ensemble.to(device)
        self.ensemble.eval()  # no dropout inside the inner loop: adaptation is deterministic
        self.settings = settings
        self.device = torch.device(device)
        self.params = dict(ensemble.named_parameters())
        self.tables = [n for n in self.params if n in ensemble.tables]
        self.dense = [n for n in self.params if n not in ensemble.tables]
        # Meta-SGD rates: full tensors for dense parameters, RowStores for tables.
        self.alpha: dict[str, torch.Tensor | RowStore] = {
            n: RowStore.like(p.detach(), settings.inner_lr) if n in self.tables else
            torch.full_like(p, settings.inner_lr, requires_grad=settings.learn_inner_lr)
            for n, p in self.params.items()}
        self._build_optimizers()

    def _build_optimizers(self) -> None:
        s = self.settings
        groups = [
            {"params": [self.params[n] for n in self.dense if not n.startswith("selector.")], "lr": s.outer_lr},
            {"params": [self.params[n] for n in self.dense if n.startswith("selector.")], "lr": s.selector_outer_lr},
        ]
        targets: dict[str, torch.Tensor | RowStore] = {n: self.params[n] for n in self.tables}
        lrs = {n: s.selector_outer_lr if n.startswith("selector.") else s.outer_lr for n in self.tables}
        if s.learn_inner_lr:
            alpha_lr = s.alpha_outer_lr or s.outer_lr
            groups.append({"params": [self.alpha[n] for n in self.dense], "lr": alpha_lr})
            targets.update({"alpha:" + n: self.alpha[n] for n in self.tables})
            lrs.update({"alpha:" + n: alpha_lr for n in self.tables})
        self.dense_optimizer = torch.optim.Adam([g for g in groups if g["params"]])
        self.table_optimizer = LazyRowAdam(targets, lrs)

    # ---- the inner loop -------------------------------------------------------------
    def _episode_leaves(self, rows: torch.Tensor, train: bool) -> tuple[dict, dict]:
        """Gather table rows (and their rates) into leaf tensors; dense ones stay shared."""
        params, alphas = {}, {}
        for n in self.tables:
            params[n] = self.params[n].detach()[rows].requires_grad_(True)
            alphas[n] = self.alpha[n].gather(rows).requires_grad_(train and self.settings.learn_inner_lr)
        for n in self.dense:
            params[n] = self.params[n] if train else self.params[n].detach().requires_grad_(True)
            alphas[n] = self.alpha[n] if train else self.alpha[n].detach()
        return params, alphas

    def adapt(self, params: dict, alphas: dict, batch: Batch, labels: torch.Tensor, create_graph: bool,
              mask: torch.Tensor | None = None, steps: int | None = None) -> dict:
        """theta_u = theta - alpha * grad of the support loss, `inner_steps` times: the one inner
        step of meta-training (create_graph: second order), meta-testing and scoring.

        torch.func.grad rather than torch.autograd.grad: it also runs under vmap and no_grad
        (meta-testing adapts a chunk of users in one vmapped call), and its result stays
        differentiable for the outer loop. First order: the gradient is detached."""
        steps = self.settings.inner_steps if steps is None else steps
        for _ in range(steps):
            grads = torch.func.grad(lambda p: self.ensemble.loss(p, batch, labels, mask, self.settings.model_loss))(
                params)
            params = {n: v - alphas[n] * (grads[n] if create_graph else grads[n].detach())
                      for n, v in params.items()}
        return params

    def _user_view(self, episode_rows, leaves, alphas, ids_list):
        """Per-user parameters: their rows of the episode leaves, and remapped ids."""
        user_rows = torch.unique(torch.cat([ids.flatten() for ids in ids_list]))
        position = torch.searchsorted(episode_rows, user_rows)
        params = {n: (v[position] if n in self.ensemble.tables else v) for n, v in leaves.items()}
        rates = {n: (v[position] if n in self.ensemble.tables else v) for n, v in alphas.items()}
        local = [torch.searchsorted(user_rows, ids) for ids in ids_list]
        return params, rates, local

    def _batches(self, data: TensorData, tasks: Sequence[UserTask], query_rows: Sequence[np.ndarray]):
        out = []
        for task, q in zip(tasks, query_rows, strict=True):
            s_batch, s_labels = data.batch(task.support, self.device)
            q_batch, q_labels = data.batch(q, self.device)
            out.append((s_batch, s_labels, q_batch, q_labels))
        return out

    def meta_step(self, data: TensorData, tasks: Sequence[UserTask]) -> float:
        """One episode: adapt each user on support, backpropagate query loss, outer step."""
        rows, leaves, alphas, loss = self.episode_backward(data, tasks)
        self._outer_step(rows, leaves, alphas)
        return loss

    def episode_backward(self, data: TensorData, tasks: Sequence[UserTask]) -> tuple:
        """Accumulate the meta-gradient of the mean query loss; return the episode's rows,
        the table leaves (whose .grad holds the rows' gradients) and the mean loss.

        Under torch.distributed each rank adapts its share of the users; the rows are the union
        over ranks and the gradients are summed over ranks (see metaselector.distributed)."""
        mine = distributed.shard(list(tasks))
        batches = self._batches(data, mine, [t.query for t in mine])
        local = [torch.cat([b[0].ids.flatten(), b[2].ids.flatten()]) for b in batches]
        rows = distributed.union_rows(torch.unique(torch.cat(local)) if local else
                                      torch.empty(0, dtype=torch.int64, device=self.device))
        leaves, alphas = self._episode_leaves(rows, train=True)
        total = 0.0
        for s_batch, s_labels, q_batch, q_labels in batches:
            params, rates, (s_ids, q_ids) = self._user_view(rows, leaves, alphas, [s_batch.ids, q_batch.ids])
            adapted = self.adapt(params, rates, Batch(s_ids, s_batch.weights), s_labels,
                                 create_graph=not self.settings.first_order)
            query_loss = self.ensemble.loss(adapted, Batch(q_ids, q_batch.weights), q_labels,
                                             model_loss=self.settings.model_loss)
            (query_loss / len(tasks)).backward()
            total += query_loss.item()
        if distributed.current().active:
            self._sum_gradients_over_ranks(leaves, alphas)
        return rows, leaves, alphas, distributed.sum_scalar(total) / len(tasks)

    def _sum_gradients_over_ranks(self, leaves: dict, alphas: dict) -> None:
        """Every rank ends with the episode's whole gradient: table rows over the union of rows,
        dense parameters and their rates whole, summed in one buffer."""
        holders = [leaves[n] for n in self.tables] + [alphas[n] for n in self.tables] + \
            [self.params[n] for n in self.dense] + [self.alpha[n] for n in self.dense]
        distributed.sum_gradients([h for h in holders if h.requires_grad])

    def _outer_step(self, rows: torch.Tensor, leaves: dict, alphas: dict) -> None:
        gradients = {}
        for n in self.tables:
            for key, local in ((n, leaves[n]), ("alpha:" + n, alphas[n])):
                if local.grad is not None:
                    gradients[key] = local.grad
        self.dense_optimizer.step()
        self.table_optimizer.step(rows, gradients)
        self.dense_optimizer.zero_grad(set_to_none=True)

    def predict(self, data: TensorData, tasks: Sequence[UserTask], eval_rows: Sequence[np.ndarray],
                adapt: bool = True, progress: bool = False, desc: str = "meta-test",
                with_weights: bool = False) -> list:
        """For each user: adapt on their support rows, then predict `eval_rows` (with
        `with_weights`: (probabilities, the selector's weights [n, K]) per user).

        Users are adapted in chunks with torch.func.vmap: each user's support and evaluation
        rows are padded to the chunk's longest (padding masked out of the loss), their table rows
        gathered into a padded per-user table, and one vmapped call adapts and predicts them all.
        Users are sorted by size first, so a chunk's users pad to similar lengths.
        """
        if distributed.current().active:  # users sharded over ranks, predictions gathered
            mine = distributed.shard(list(range(len(tasks))))
            local = self._predict_here(data, [tasks[i] for i in mine], [eval_rows[i] for i in mine], adapt,
                                       progress, desc, with_weights)
            out: list = [None] * len(tasks)
            for rank, part in enumerate(distributed.gather_objects(local)):
                for position, value in zip(range(rank, len(tasks), distributed.current().world), part, strict=True):
                    out[position] = value
            return out
        return self._predict_here(data, tasks, eval_rows, adapt, progress, desc, with_weights)

    def _predict_here(self, data, tasks, eval_rows, adapt, progress, desc, with_weights) -> list:
        out: list = [np.empty(0)] * len(tasks)
        sizes = np.array([len(t.support) + len(e) for t, e in zip(tasks, eval_rows, strict=True)])
        order = np.argsort(sizes, kind="stable")
        dense_size = sum(self.params[n].numel() for n in self.dense)
        # Per user the vmapped step holds a few copies of the dense parameters and of its rows.
        max_users = max(1, min(512, (1 << 24) // max(1, dense_size)))
        # Padded rows per chunk: 8,192 was 1.8x faster and 3x leaner than 65,536 on ml-latest-small.
        row_budget = 1 << 13
        bar = tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False, mininterval=0.5)
        start = 0
        while start < len(order):
            stop = start + 1
            # Sorted ascending, so the chunk pads every user to the last one's size.
            while stop - start < max_users and stop < len(order) and \
                    (stop + 1 - start) * sizes[order[stop]] <= row_budget:
                stop += 1
            part = order[start:stop]
            probabilities = self._adapt_and_predict(data, [tasks[i] for i in part], [eval_rows[i] for i in part],
                                                    adapt, with_weights)
            for i, p in zip(part, probabilities, strict=True):
                out[i] = p
            bar.update(len(part))
            start = stop
        bar.close()
        return out

    def _adapt_and_predict(self, data: TensorData, tasks: Sequence[UserTask], eval_rows: Sequence[np.ndarray],
                           adapt: bool, with_weights: bool = False) -> list:
        """One vmapped chunk of users (see `predict`)."""
        support = padded_rows(data, [t.support for t in tasks], self.device)
        evaluation = padded_rows(data, list(eval_rows), self.device)
        # Each user's sorted feature ids, padded with an id past the vocabulary (never looked up).
        vocabulary = self.params[self.tables[0]].shape[0] if self.tables else 1
        per_user = [torch.unique(torch.cat([s.flatten(), e.flatten()])) for s, e in
                    zip(support.user_ids, evaluation.user_ids, strict=True)]
        width = max(len(u) for u in per_user)
        rows = torch.full((len(tasks), width), vocabulary, dtype=torch.int64, device=self.device)
        for k, u in enumerate(per_user):
            rows[k, :len(u)] = u
        s_ids = torch.searchsorted(rows, support.ids.flatten(1)).view_as(support.ids)
        e_ids = torch.searchsorted(rows, evaluation.ids.flatten(1)).view_as(evaluation.ids)
        lookup = rows.clamp(max=vocabulary - 1)
        tables = {n: self.params[n].detach()[lookup] for n in self.tables}
        rates = {n: self.alpha[n].gather(lookup) for n in self.tables}
        dense = {n: self.params[n].detach() for n in self.dense}
        dense_rates = {n: self.alpha[n].detach() for n in self.dense}
        steps = self.settings.inner_steps if adapt else 0

        def one_user(tables_u, rates_u, s_ids_u, s_w, s_y, s_mask, e_ids_u, e_w):
            params = self.adapt({**dense, **tables_u}, {**dense_rates, **rates_u}, Batch(s_ids_u, s_w), s_y,
                                create_graph=False, mask=s_mask, steps=steps)
            return self.ensemble.mixture(params, Batch(e_ids_u, e_w))

        with torch.no_grad():
            p, weights = torch.func.vmap(one_user)(tables, rates, s_ids, support.weights, support.labels,
                                                   support.mask, e_ids, evaluation.weights)
        p, weights = p.double().cpu().numpy(), weights.double().cpu().numpy()
        if with_weights:
            return [(p[k, :len(e)], weights[k, :len(e)]) for k, e in enumerate(eval_rows)]
        return [p[k, :len(e)] for k, e in enumerate(eval_rows)]

    def query_loss(self, data: TensorData, tasks: Sequence[UserTask]) -> float:
        """Mean post-adaptation query LogLoss over users (validation; no outer step)."""
        from ..evaluation.metrics import logloss

        predictions = self.predict(data, tasks, [t.query for t in tasks])
        labels = np.concatenate([data.labels[t.query].numpy() for t in tasks])
        return logloss(labels, np.concatenate(predictions))

    @torch.no_grad()
    def transfer_base_models(self, before: dict, after: dict) -> None:
        """theta += (after - before) per base model: move the meta-learned change of theta onto
        other pretrained weights of the same models (e.g. refit on all training rows)."""
        for name, old in before.items():
            new = dict(after[name].named_parameters())
            for pname, value in old.named_parameters():
                self.params[f"models.{self.ensemble.key_of[name]}.{pname}"].add_(new[pname].to(value.device) - value)

    # ---- the outer loop -------------------------------------------------------------
    def dense_alpha(self) -> dict[str, torch.Tensor]:
        """Every Meta-SGD rate as a full tensor (tables materialised; for tests and inspection)."""
        return {n: a.dense() if isinstance(a, RowStore) else a.detach().clone() for n, a in self.alpha.items()}

    def state(self) -> dict:
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "alpha": {n: a.clone() if isinstance(a, RowStore) else a.detach().clone()
                          for n, a in self.alpha.items()}}

    def load_state(self, state: dict) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state["params"][n])
            for n, a in state["alpha"].items():
                self.alpha[n].copy_(a)

    def fit(self, data: TensorData, train_tasks: list[UserTask], valid_tasks: list[UserTask], seed: int,
            progress: bool = True, desc: str = "MetaSelector", criterion: Callable[[], float] | None = None,
            state: StateFile | None = None) -> MetaHistory:
        """Episodes of m users, epochs over the users; early stopping on `criterion()` (lower is
        better) if given, else on the query LogLoss of the held-out users `valid_tasks` (which is
        recorded either way). `state`: written at every epoch boundary, resumed from if present."""
        rng = np.random.default_rng(seed)
        stopper = EarlyStopping(self.settings.patience)

        def validate(epoch: int) -> tuple[float, dict]:
            record = {}
            if valid_tasks:
                record["held_out_users_query_logloss"] = self.query_loss(data, valid_tasks)
            value = criterion() if criterion is not None else record.get("held_out_users_query_logloss", -epoch)
            return value, record

        saved = state.load() if state is not None else None
        if saved is not None:
            self._restore_training_state(saved)
            rng.bit_generator.state = saved["rng"]
            stopper.load_state_dict(saved["stopper"])
        if saved is None or not saved["finished"]:
            if saved is None:
                value, record = validate(0)
                stopper.update(0, value, self.state, **record)
            for epoch in range(stopper.epoch + 1, self.settings.epochs + 1):
                loss = self._train_epoch(data, train_tasks, rng, progress, f"{desc} epoch {epoch}")
                value, record = validate(epoch)
                stop = stopper.update(epoch, value, self.state, train_query_loss=loss, **record)
                if state is not None:
                    state.save({"finished": stop or epoch == self.settings.epochs, "rng": rng.bit_generator.state,
                                "stopper": stopper.state_dict(), **self._training_state()})
                if stop:
                    break
        self.load_state(stopper.best_state)
        return MetaHistory(stopper.best_epoch, stopper.best_value, stopper.history)

    def _train_epoch(self, data: TensorData, tasks: list[UserTask], rng: np.random.Generator, progress: bool,
                     desc: str) -> float:
        """One pass over the users (at most `max_episodes` episodes); the mean query loss."""
        m = self.settings.users_per_episode
        order = rng.permutation(len(tasks))
        if self.settings.max_episodes:
            order = order[:self.settings.max_episodes * m]
        losses = []
        bar = tqdm(range(0, len(order), m), desc=desc, disable=not progress, leave=False, mininterval=0.5)
        for start in bar:
            losses.append(self.meta_step(data, [tasks[i] for i in order[start:start + m]]))
            if len(losses) % 10 == 0:
                bar.set_postfix(query_loss=f"{np.mean(losses[-50:]):.4f}")
        return float(np.mean(losses)) if losses else float("nan")

    def _training_state(self) -> dict:
        """Everything the outer loop carries between epochs: weights, rates, both optimizers."""
        return {**self.state(), "dense_optimizer": self.dense_optimizer.state_dict(),
                "table_optimizer": self.table_optimizer.state_dict()}

    def _restore_training_state(self, saved: dict) -> None:
        self.load_state(saved)
        self.dense_optimizer.load_state_dict(saved["dense_optimizer"])
        self.table_optimizer.load_state_dict(saved["table_optimizer"])


def clone_models(models: dict) -> dict:
    return {name: copy.deepcopy(model) for name, model in models.items()}
