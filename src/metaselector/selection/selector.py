"""The selector S(x; phi): its own feature embedding, an MLP, a softmax over the K models."""

from __future__ import annotations

import torch
from torch import nn

from ..models.base import BaseModel, Batch, ModelSettings, pool_fields, weighted_rows
from ..models.deepfm import mlp


class Selector(BaseModel):
    """lambda = softmax(MLP([pooled field embeddings, optionally the K predictions]))."""

    table_names = ("embedding",)
    model_name = "Selector"

    def __init__(self, layout, settings: ModelSettings, num_models: int, uses_predictions: bool = False) -> None:
        super().__init__(layout, settings)
        k = settings.embedding_dim
        self.uses_predictions = uses_predictions
        self.embedding = self.table(layout.num_features, (k,))
        inputs = layout.num_fields * k + (num_models if uses_predictions else 0)
        self.deep = mlp(inputs, settings.hidden, 0.0, num_models)
        # Start from the uniform mixture: the average of the base models.
        nn.init.zeros_(self.deep[-1].weight)
        nn.init.zeros_(self.deep[-1].bias)

    def scores(self, batch: Batch, predictions: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised selection scores [N, K]."""
        embedded = weighted_rows(self.embedding, batch)
        features = pool_fields(embedded, self.field_pool).flatten(1)
        if self.uses_predictions:
            features = torch.cat([features, predictions], dim=1)
        return self.deep(features)

    def forward(self, batch: Batch, predictions: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.scores(batch, predictions), dim=-1)


def mix(weights: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """The lambda-weighted average of the base models' probabilities [N]."""
    return (weights * probabilities).sum(dim=-1)
