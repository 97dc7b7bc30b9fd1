"""The inference module: theta (base models), phi (selector) and alpha (Meta-SGD's per-parameter
inner rates) of one Ensemble, adapting to users and predicting for them.

This is all that `score`, `serve` and `MetaSelector.load` build: no optimizer (those belong to
`meta_trainer.MetaTrainer`). The rates are module state, as in learn2learn's MetaSGD: full
tensors for dense parameters, RowStores for embedding tables (stored only for rows ever
touched), saved and loaded with the weights by `state_dict` / `load_state_dict`.

Glossary: *adapt* is the inner step, theta_u = theta - alpha * grad of the user's support loss;
*predict* adapts each user on their support rows, then scores their evaluation rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from .. import distributed
from ..errors import InputError
from ..models.base import Batch
from ..training.row_state import RowStore
from ..training.tensors import TensorData
from .ensemble import Ensemble
from .meta_settings import MetaSettings
from .tasks import UserTask
from .user_profile import UserProfile
from .user_rows import gather_users


class MetaSGDEnsemble:
    """theta, phi and alpha of an Ensemble; per-user adaptation touches only a user's table rows."""

    def __init__(self, ensemble: Ensemble, settings: MetaSettings, device: torch.device | str = "cpu",
                 profile: UserProfile | None = None) -> None:
        self.ensemble = ensemble.to(device)
        # the user's profile, for a selector that reads it (user_profile.py)
        self.profile = profile.to(torch.device(device)) if profile is not None else None
        self.ensemble.eval()  # no dropout inside the inner loop: adaptation is deterministic
        self.settings = settings
        self.device = torch.device(device)
        self.params = dict(ensemble.named_parameters())
        self.tables = [n for n in self.params if n in ensemble.tables]
        self.dense = [n for n in self.params if n not in ensemble.tables]
        self.alpha: dict[str, torch.Tensor | RowStore] = {
            n: RowStore.like(p.detach(), settings.inner_lr) if n in self.tables else
            torch.full_like(p, settings.inner_lr, requires_grad=settings.learn_inner_lr)
            for n, p in self.params.items()}

    @property
    def vocabulary(self) -> int:
        return self.params[self.tables[0]].shape[0] if self.tables else 1

    # ---- the inner step ------------------------------------------------------------
    def adapt(self, params: dict, alphas: dict, batch: Batch, labels: torch.Tensor, create_graph: bool,
              mask: torch.Tensor | None = None, steps: int | None = None,
              profile: torch.Tensor | None = None) -> dict:
        """theta_u = theta - alpha * grad of the support loss, `inner_steps` times: the one inner
        step of meta-training (create_graph: second order), meta-testing and scoring.

        torch.func.grad rather than torch.autograd.grad: it also runs under vmap and no_grad
        (meta-testing adapts a group of users in one vmapped call), and its result stays
        differentiable for the outer loop. First order: the gradient is detached."""
        steps = self.settings.inner_steps if steps is None else steps
        for _ in range(steps):
            grads = torch.func.grad(lambda p: self.ensemble.loss(p, batch, labels, mask,
                                                                    model_loss=self.settings.model_loss,
                                                                    profile=profile))(params)
            params = {n: v - alphas[n] * (grads[n] if create_graph else grads[n].detach())
                      for n, v in params.items()}
        return params

    # ---- meta-testing and scoring ----------------------------------------------------
    def predict(self, data: TensorData, tasks: Sequence[UserTask], eval_rows: Sequence[np.ndarray],
                adapt: bool = True, progress: bool = False, desc: str = "meta-test",
                with_weights: bool = False) -> list:
        """For each user: adapt on their support rows, then predict `eval_rows` (with
        `with_weights`: (probabilities, the selector's weights [n, K]) per user). Users are
        gathered in groups of similar size and each group adapted in one vmapped call; under
        torch.distributed users are sharded over ranks and the predictions gathered."""
        if distributed.current().active:
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
        dense_size = sum(self.params[n].numel() for n in self.dense)
        # Per user the vmapped step holds a few copies of the dense parameters and of its rows.
        max_users = max(1, min(512, (1 << 24) // max(1, dense_size)))
        groups = length_groups(np.array([len(t.support) for t in tasks]), np.array([len(e) for e in eval_rows]),
                               max_users)
        bar = tqdm(total=len(tasks), desc=desc, disable=not progress, leave=False, mininterval=0.5)
        for part in groups:
            results = self._adapt_and_predict(data, [tasks[i] for i in part], [eval_rows[i] for i in part],
                                              adapt, with_weights)
            for i, result in zip(part, results, strict=True):
                out[i] = result
            bar.update(len(part))
        bar.close()
        return out

    def _adapt_and_predict(self, data: TensorData, tasks: Sequence[UserTask], eval_rows: Sequence[np.ndarray],
                           adapt: bool, with_weights: bool = False) -> list:
        """One vmapped group of users (see `predict`)."""
        users = gather_users(data, [t.support for t in tasks], list(eval_rows), self.vocabulary, self.device)
        lookup = users.lookup(self.vocabulary)
        tables = {n: self.params[n].detach()[lookup] for n in self.tables}
        rates = {n: self.alpha[n].gather(lookup) for n in self.tables}
        dense = {n: self.params[n].detach() for n in self.dense}
        dense_rates = {n: self.alpha[n].detach() for n in self.dense}
        steps = self.settings.inner_steps if adapt else 0
        s, e = users.support, users.evaluation
        # each user's profile from their support rows (none for a selector that does not read it)
        profiles = self.profile.features(data, [t.support for t in tasks]).to(self.device) \
            if self.profile is not None else None

        def one_user(tables_u, rates_u, profile, s_ids, s_w, s_y, s_mask, e_ids, e_w):
            params = self.adapt({**dense, **tables_u}, {**dense_rates, **rates_u}, Batch(s_ids, s_w), s_y,
                                create_graph=False, mask=s_mask, steps=steps, profile=profile)
            return self.ensemble.mixture(params, Batch(e_ids, e_w), profile=profile)

        with torch.no_grad():
            in_dims = (0, 0, None if profiles is None else 0, 0, 0, 0, 0, 0, 0)
            p, weights = torch.func.vmap(one_user, in_dims=in_dims)(tables, rates, profiles, s.ids, s.weights,
                                                                    s.labels, s.mask, e.ids, e.weights)
        p, weights = p.double().cpu().numpy(), weights.double().cpu().numpy()
        if with_weights:
            return [(p[k, :len(rows)], weights[k, :len(rows)]) for k, rows in enumerate(eval_rows)]
        return [p[k, :len(rows)] for k, rows in enumerate(eval_rows)]

    def query_loss(self, data: TensorData, tasks: Sequence[UserTask]) -> float:
        """Mean post-adaptation query LogLoss over users."""
        from ..evaluation.metrics import logloss

        predictions = self.predict(data, tasks, [t.query for t in tasks])
        labels = np.concatenate([data.labels[t.query].numpy() for t in tasks])
        return logloss(labels, np.concatenate(predictions))

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors: theta and phi ("param/<name>"), dense rates ("alpha/<name>"), and the
        tables' row-stored rates as rows and values ("alpha_rows/<name>", "alpha_values/<name>")."""
        tensors = {f"param/{n}": p.detach().cpu().contiguous() for n, p in self.params.items()}
        if self.profile is not None:
            tensors.update({k: v.cpu() for k, v in self.profile.state_dict().items()})
        for n, rate in self.alpha.items():
            if isinstance(rate, RowStore):
                rows = torch.nonzero(rate.slot).flatten().to(torch.int64)
                tensors[f"alpha_rows/{n}"] = rows.cpu()
                tensors[f"alpha_values/{n}"] = rate.gather(rows).cpu().contiguous()
            else:
                tensors[f"alpha/{n}"] = rate.detach().cpu().contiguous()
        return tensors

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor], where: str = "state") -> None:
        """Set theta, phi and alpha from `state_dict`'s tensors; a missing tensor, a wrong shape or
        a row outside a table is refused with one line naming `where` and the tensor."""
        for n, p in self.params.items():
            p.copy_(_tensor(tensors, f"param/{n}", p.shape, where))
        if self.profile is not None:
            self.profile.load_state_dict(tensors, where)
            self.profile.to(self.device)
        for n, rate in self.alpha.items():
            if isinstance(rate, RowStore):
                rows = _tensor(tensors, f"alpha_rows/{n}", None, where)
                values = _tensor(tensors, f"alpha_values/{n}", (len(rows), *rate.shape[1:]), where)
                if rows.dim() != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= rate.shape[0])):
                    raise InputError(f"{where}: tensor 'alpha_rows/{n}' holds rows outside the table")
                rate.write(rows.to(rate.device, torch.int64), values.to(rate.device))
            else:
                rate.copy_(_tensor(tensors, f"alpha/{n}", rate.shape, where))

    def snapshot(self) -> dict:
        """An in-memory copy of theta, phi and alpha (early stopping's best state)."""
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "alpha": {n: a.clone() if isinstance(a, RowStore) else a.detach().clone()
                          for n, a in self.alpha.items()}}

    @torch.no_grad()
    def restore(self, snapshot: dict) -> None:
        for n, p in self.params.items():
            p.copy_(snapshot["params"][n])
        for n, a in snapshot["alpha"].items():
            self.alpha[n].copy_(a)

    @torch.no_grad()
    def scale_selector_rates(self, factor: float) -> None:
        """Multiply the selector's Meta-SGD rates by `factor`: how far a user's inner step moves it."""
        for n, a in self.alpha.items():
            if n.startswith("selector."):
                a.scale_(factor) if isinstance(a, RowStore) else a.mul_(factor)

    def dense_alpha(self) -> dict[str, torch.Tensor]:
        """Every Meta-SGD rate as a full tensor (tables materialised; for tests and inspection)."""
        return {n: a.dense() if isinstance(a, RowStore) else a.detach().clone() for n, a in self.alpha.items()}

    # ---- base models ---------------------------------------------------------------------
    def _model_names(self, name: str) -> dict[str, str]:
        """Parameter name within base model `name` -> its flat name here."""
        prefix = f"models.{self.ensemble.key_of[name]}."
        return {n[len(prefix):]: n for n in self.params if n.startswith(prefix)}

    @torch.no_grad()
    def copy_model_from(self, name: str, other: MetaSGDEnsemble, shift: dict | None = None) -> None:
        """Base model `name`'s theta and Meta-SGD rates from `other` (a module holding that model),
        less `shift` per parameter (to undo a change carried onto other weights)."""
        theirs = other._model_names(name)
        for local, flat in self._model_names(name).items():
            self.params[flat].copy_(other.params[theirs[local]] - (shift[local] if shift else 0))
            rate = other.alpha[theirs[local]]
            self.alpha[flat].copy_(rate.clone() if isinstance(rate, RowStore) else rate)

    @torch.no_grad()
    def carry_over(self, before: dict, after: dict) -> None:
        """theta += (after - before) per base model: carry the meta-learned change of theta over
        to other pretrained weights of the same models (e.g. continued on all training rows)."""
        for name, old in before.items():
            new = dict(after[name].named_parameters())
            names = self._model_names(name)
            for pname, value in old.named_parameters():
                self.params[names[pname]].add_(new[pname].to(value.device) - value)


# Padded rows per group: 8,192 was 1.8x faster and 3x leaner than 65,536 on ml-latest-small.
ROW_BUDGET = 1 << 13
# A group may pad at most this share of its rows (or SMALL_PADDING rows): a vmapped call pads
# every user to the group's longest support and evaluation rows, and on real histories (16 to
# 150 events) one group of 32 users spent about half its rows on padding. Splitting costs a
# call each: on 32 such users (ml-latest-small, 2 threads, score_users) no split 43 users/s,
# 0.2 / 256 rows 59-61, 0.25 / 512 rows 62, 0.35 / 1024 rows 55-60; on 8 users splitting
# loses a little (42 unsplit, 38 split).
MAX_PADDING = 0.25
SMALL_PADDING = 512


def length_groups(support: np.ndarray, evaluation: np.ndarray, max_users: int,
                  row_budget: int = ROW_BUDGET) -> list[np.ndarray]:
    """Users (by their support and evaluation row counts) in groups adapted by one vmapped call
    each: sorted by length, a group grows while its padded rows stay within `row_budget` and
    its padding within MAX_PADDING of them (or SMALL_PADDING rows), up to `max_users`."""
    order = np.lexsort((evaluation, support))
    groups, start = [], 0
    while start < len(order):
        stop, longest_s, longest_e, real = start + 1, support[order[start]], evaluation[order[start]], \
            support[order[start]] + evaluation[order[start]]
        while stop - start < max_users and stop < len(order):
            nxt = order[stop]
            s, e = max(longest_s, support[nxt]), max(longest_e, evaluation[nxt])
            padded, total = (stop + 1 - start) * (s + e), real + support[nxt] + evaluation[nxt]
            if padded > row_budget or padded - total > max(MAX_PADDING * padded, SMALL_PADDING):
                break
            longest_s, longest_e, real, stop = s, e, total, stop + 1
        groups.append(order[start:stop])
        start = stop
    return groups


def _tensor(tensors: dict, key: str, shape, where: str) -> torch.Tensor:
    if key not in tensors:
        raise InputError(f"{where}: tensor '{key}' missing")
    value = tensors[key]
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise InputError(f"{where}: tensor '{key}' has shape {tuple(value.shape)}, expected {tuple(shape)}")
    return value
