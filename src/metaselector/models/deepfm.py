"""DeepFM (Guo et al. 2017): an FM and an MLP sharing one embedding table."""

from __future__ import annotations

import torch
from torch import nn

from .base import (
    TRAINING_SPACE,
    BaseModel,
    Batch,
    SearchParam,
    fm_interaction,
    linear_term,
    pool_fields,
    register_model,
    weighted_rows,
)
from .layers import mlp


@register_model("DeepFM")
class DeepFM(BaseModel):
    table_names = ("linear", "embedding")
    search_space = {"embedding_dim": SearchParam(4, 32, log=True, integer=True),
                    "hidden": SearchParam(choices=("128", "256-256", "256-256-256", "400-400-400")),
                    "dropout": SearchParam(0.0, 0.5), **TRAINING_SPACE}

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        k = settings.embedding_dim
        self.linear = self.table(layout.num_features, (1,))
        self.embedding = self.table(layout.num_features, (k,))
        self.bias = nn.Parameter(torch.zeros(()))
        self.deep = mlp(layout.num_fields * k, settings.hidden, settings.dropout, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        embedded = weighted_rows(self.embedding, batch)  # [N, S, k]
        per_field = pool_fields(embedded, self.field_of_slot, self.layout.num_fields).flatten(1)
        deep = self.deep(per_field).squeeze(-1)
        return linear_term(self.linear, self.bias, batch) + fm_interaction(embedded) + deep
