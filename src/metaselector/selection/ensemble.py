"""K base models and an optional selector as one functional learner.

All learnable tensors are addressed by flat names (`models.FM.embedding`,
`selector.deep.0.weight`), so a per-user parameter dict can replace any of them, and
the embedding tables among them (`tables`) can be swapped for small per-user tables.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..models.base import BaseModel, Batch
from .selector import Selector, mix

EPS = 1e-7


def module_key(name: str, index: int) -> str:
    """`name` if it can be a module key, else a key made of its class name and position."""
    if name.isidentifier():
        return name
    return f"{re.sub(r'[^0-9A-Za-z_]', '_', name.rpartition(':')[2]) or 'model'}_{index}"


class Ensemble(nn.Module):
    def __init__(self, models: dict[str, BaseModel], selector: Selector | None) -> None:
        super().__init__()
        if selector is None and len(models) != 1:
            raise ValueError("without a selector the ensemble holds exactly one model")
        # Module keys cannot hold "." (a plug-in model's "pkg.module:Class"): such names get a
        # safe key, and `key_of` maps each model's name to it.
        self.key_of = {name: module_key(name, index) for index, name in enumerate(models)}
        self.models = nn.ModuleDict({self.key_of[name]: m for name, m in models.items()})
        self.selector = selector
        self.tables = {f"models.{key}.{t}" for key, m in self.models.items() for t in m.table_names}
        if selector is not None:
            self.tables |= {f"selector.{t}" for t in selector.table_names}
        # For each module: (prefix, module), so a flat dict is split once per call.
        self._parts = [(f"models.{key}.", m) for key, m in self.models.items()]

    def per_model(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Each base model's probability [N, K] under the parameter dict `params`."""
        per_model = []
        for prefix, module in self._parts:
            own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            per_model.append(torch.sigmoid(functional_call(module, own, (batch,))))
        return torch.stack(per_model, dim=-1)

    def mixture(self, params: dict[str, torch.Tensor], batch: Batch, stacked: torch.Tensor | None = None,
                profile: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(final probability [N], the selector's weights [N, K]) under the parameter dict `params`
        (`stacked`: the base models' probabilities, if already computed; `profile`: the user's
        profile, for a selector that reads it)."""
        if stacked is None:
            stacked = self.per_model(params, batch)
        if self.selector is None:
            return stacked[:, 0], torch.ones_like(stacked)
        own = {k[9:]: v for k, v in params.items() if k.startswith("selector.")}
        weights = functional_call(self.selector, own, (batch, stacked, profile))
        return mix(weights, stacked), weights

    def probabilities(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Final predicted probability [N] under the parameter dict `params`."""
        return self.mixture(params, batch)[0]

    def loss(self, params: dict[str, torch.Tensor], batch: Batch, labels: torch.Tensor,
             mask: torch.Tensor | None = None, *, model_loss: str, profile: torch.Tensor | None = None) -> torch.Tensor:
        """Mean LogLoss of the mixture; with `mask`, the mean over the rows where it is 1 (padded
        batches).

        model_loss "own": each base model's parameters descend that model's own LogLoss and the
        selector's the mixture's, computed on the models' probabilities with their gradient
        stopped: the sum of the two. The mixture's gradient reaches model k scaled by its weight
        lambda_k, so with many models (or one with a small weight) "mixture" adapts each model
        by a fraction of what its own loss would; "own" adapts each as if it were alone."""
        stacked = self.per_model(params, batch)
        if model_loss == "mixture" or self.selector is None:
            return _mean_logloss(self.mixture(params, batch, stacked, profile)[0], labels, mask)
        fixed = stacked.detach()
        selector_loss = _mean_logloss(self.mixture(params, batch, fixed, profile)[0], labels, mask)
        own = sum(_mean_logloss(stacked[:, k], labels, mask) for k in range(stacked.shape[1]))
        return selector_loss + own


def _mean_logloss(p: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    p = p.clamp(EPS, 1 - EPS)
    if mask is None:
        return F.binary_cross_entropy(p, labels)
    losses = F.binary_cross_entropy(p, labels, reduction="none")
    return (losses * mask).sum() / mask.sum().clamp(min=1)
