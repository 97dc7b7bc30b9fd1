"""Field-aware factorization machine (Juan et al. 2016), all field pairs in one batched op.

Each feature has one latent vector per target field: a table [V, F, k]. Slots are pooled
into their field first (so a multi-hot field is one field, mean-pooled), giving
P[n, f, g] = the field-f vector meant for field g. The interaction is
sum_{f<g} <P[f, g], P[g, f]>: one elementwise product with the transpose, no Python loop.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import TRAINING_SPACE, BaseModel, Batch, SearchParam, gather_rows, linear_term, pool_fields, register_model


@register_model("FFM")
class FFM(BaseModel):
    table_names = ("linear", "embedding")
    search_space = {"embedding_dim": SearchParam(2, 16, log=True, integer=True), **TRAINING_SPACE}

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        fields = layout.num_fields
        self.linear = self.table(layout.num_features, (1,))
        self.embedding = self.table(layout.num_features, (fields, settings.embedding_dim))
        self.bias = nn.Parameter(torch.zeros(()))
        # Index pairs (f, g) with f < g; integer indexing keeps the op vmap-able.
        self.register_buffer("pairs", torch.triu_indices(fields, fields, 1), persistent=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, k = self.embedding.shape[1], self.embedding.shape[2]
        rows = gather_rows(self.embedding.reshape(-1, fields * k), batch.ids)  # [N, S, F*k]
        per_slot = rows * batch.weights.unsqueeze(-1)
        pooled = pool_fields(per_slot, self.field_of_slot, fields).view(-1, fields, fields, k)
        pairs = (pooled * pooled.transpose(1, 2)).sum(dim=-1)  # [N, F, F], symmetric
        interaction = pairs[:, self.pairs[0], self.pairs[1]].sum(dim=1)
        return linear_term(self.linear, self.bias, batch) + interaction
