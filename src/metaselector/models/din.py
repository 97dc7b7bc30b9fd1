"""History attention in the manner of DIN (Zhou et al. 2018): the candidate item attends over the
user's history items; the attention-pooled interest, the candidate and every other field's
pooled embedding feed an MLP (beyond the paper: a sequence-aware model family)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import TRAINING_SPACE, BaseModel, Batch, SearchParam, gather_rows, pool_fields, register_model, weighted_rows
from .layers import mlp
from .mf import ITEM_FIELDS, field_slot

HISTORY_FIELDS = ("user_history_movie", "user_history_item")


@register_model("DIN")
class DIN(BaseModel):
    table_names = ("embedding",)
    search_space = {"embedding_dim": SearchParam(4, 32, log=True, integer=True),
                    "hidden": SearchParam(choices=("64", "128-64", "256-128", "200-80")),
                    "dropout": SearchParam(0.0, 0.5), **TRAINING_SPACE}

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        k = settings.embedding_dim
        self.item_slot = field_slot(layout, ITEM_FIELDS, "DIN")
        history = next((f for f in layout.fields if f.name in HISTORY_FIELDS), None)
        if history is None:
            raise ConfigError(f"model DIN: the data has none of the fields {', '.join(HISTORY_FIELDS)}")
        self.history_slots = slice(history.slot_start, history.slot_stop)
        self.embedding = self.table(layout.num_features, (k,))
        # attention unit over [history, candidate, history * candidate, history - candidate]
        self.attention = mlp(4 * k, [4 * k], 0.0, 1)
        self.deep = mlp((layout.num_fields + 1) * k, settings.hidden, settings.dropout, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        candidate = gather_rows(self.embedding, batch.ids[:, self.item_slot])  # [N, k]
        history_ids = batch.ids[:, self.history_slots]
        history = gather_rows(self.embedding, history_ids)  # [N, L, k]
        target = candidate.unsqueeze(1).expand_as(history)
        scores = self.attention(torch.cat([history, target, history * target, history - target], dim=-1))
        present = (batch.weights[:, self.history_slots] > 0).to(history.dtype).unsqueeze(-1)
        interest = (scores * present * history).sum(dim=1)  # DIN keeps the raw (unnormalised) weights
        per_field = pool_fields(weighted_rows(self.embedding, batch), self.field_of_slot, self.layout.num_fields)
        return self.deep(torch.cat([per_field.flatten(1), interest], dim=1)).squeeze(-1)
