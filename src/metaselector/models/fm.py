"""Factorization machine (Rendle 2010): linear terms plus all pairwise factorized interactions."""

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
    register_model,
    weighted_rows,
)


@register_model("FM")
class FM(BaseModel):
    table_names = ("linear", "embedding")
    search_space = {"embedding_dim": SearchParam(4, 32, log=True, integer=True), **TRAINING_SPACE}

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        self.linear = self.table(layout.num_features, (1,))
        self.embedding = self.table(layout.num_features, (settings.embedding_dim,))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> torch.Tensor:
        embedded = weighted_rows(self.embedding, batch)
        return linear_term(self.linear, self.bias, batch) + fm_interaction(embedded)
