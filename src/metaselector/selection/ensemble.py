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

    def mixture(self, params: dict[str, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(final probability [N], the selector's weights [N, K]) under the parameter dict `params`."""
        per_model = []
        for prefix, module in self._parts:
            own = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            per_model.append(torch.sigmoid(functional_call(module, own, (batch,))))
        stacked = torch.stack(per_model, dim=-1)
        if self.selector is None:
            return stacked[:, 0], torch.ones_like(stacked)
        own = {k[9:]: v for k, v in params.items() if k.startswith("selector.")}
        weights = functional_call(self.selector, own, (batch, stacked))
        return mix(weights, stacked), weights

    def probabilities(self, params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        """Final predicted probability [N] under the parameter dict `params`."""
        return self.mixture(params, batch)[0]

    def forward(self, batch: Batch) -> torch.Tensor:
        """Probabilities [N] with the module's own parameters (ordinary, non-functional call)."""
        stacked = torch.stack([torch.sigmoid(m(batch)) for m in self.models.values()], dim=-1)
        if self.selector is None:
            return stacked[:, 0]
        return mix(self.selector(batch, stacked), stacked)

    def loss(self, params: dict[str, torch.Tensor], batch: Batch, labels: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean LogLoss; with `mask`, the mean over the rows where it is 1 (padded batches)."""
        p = self.probabilities(params, batch).clamp(EPS, 1 - EPS)
        if mask is None:
            return F.binary_cross_entropy(p, labels)
        losses = F.binary_cross_entropy(p, labels, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1)
