"""The selector S(x; phi): its own feature embedding, an MLP, a softmax over the K models."""

from __future__ import annotations

import torch
from torch import nn

from ..models.base import BaseModel, Batch, ModelSettings, pool_fields, weighted_rows
from ..models.layers import mlp


class Selector(BaseModel):
    """lambda = softmax(MLP([pooled field embeddings, optionally the K predictions, optionally
    the user's profile]))."""

    table_names = ("embedding",)
    model_name = "Selector"

    def __init__(self, layout, settings: ModelSettings, num_models: int, uses_predictions: bool = False,
                 profile_features: int = 0) -> None:
        super().__init__(layout, settings)
        k = settings.embedding_dim
        self.uses_predictions, self.profile_features = uses_predictions, profile_features
        self.embedding = self.table(layout.num_features, (k,))
        inputs = layout.num_fields * k + (num_models if uses_predictions else 0) + profile_features
        self.deep = mlp(inputs, settings.hidden, 0.0, num_models)
        # The profile also enters the scores linearly, so that a blend whose weights are a linear
        # function of it (feature-weighted stacking) is a selector too: a start (selector_start).
        self.profile_head = nn.Linear(profile_features, num_models, bias=False) if profile_features else None
        # Start from the uniform mixture: the average of the base models.
        nn.init.zeros_(self.deep[-1].weight)
        nn.init.zeros_(self.deep[-1].bias)
        if self.profile_head is not None:
            nn.init.zeros_(self.profile_head.weight)

    def scores(self, batch: Batch, predictions: torch.Tensor | None = None,
               profile: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised selection scores [N, K]; `profile`: the user's profile [F] (one user)."""
        embedded = weighted_rows(self.embedding, batch)
        features = pool_fields(embedded, self.field_of_slot, self.layout.num_fields).flatten(1)
        if self.uses_predictions:
            features = torch.cat([features, predictions], dim=1)
        if not self.profile_features:
            return self.deep(features)
        if profile is None:
            raise ValueError("this selector reads the user's profile: pass profile=")
        profile = profile.to(features.dtype)
        features = torch.cat([features, profile.expand(features.shape[0], -1)], dim=1)
        return self.deep(features) + self.profile_head(profile)

    def forward(self, batch: Batch, predictions: torch.Tensor | None = None,
                profile: torch.Tensor | None = None) -> torch.Tensor:
        return torch.softmax(self.scores(batch, predictions, profile), dim=-1)


def mix(weights: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """The lambda-weighted average of the base models' probabilities [N]."""
    return (weights * probabilities).sum(dim=-1)


def global_mixture_logits(probabilities: torch.Tensor, labels: torch.Tensor, steps: int = 200) -> torch.Tensor:
    """The K logits of the one mixture (the same weights for every sample) that minimises the
    LogLoss of sum_k softmax(b)_k p_k on held-out rows: the selector's starting point, so that
    meta-training personalises a good global blend rather than the uniform one."""
    logits = torch.zeros(probabilities.shape[1], dtype=torch.float64, requires_grad=True)
    p, y = probabilities.double(), labels.double()
    optimizer = torch.optim.LBFGS([logits], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy(mix(torch.softmax(logits, 0), p).clamp(1e-7, 1 - 1e-7), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return logits.detach().float()


def start_from_mixture(selector: Selector, logits: torch.Tensor, profile_weights: torch.Tensor | None = None) -> None:
    """Start the selector at one blend (`logits` [K]), or at a blend whose logits are `logits` +
    `profile_weights` [K, F] times the user's profile."""
    with torch.no_grad():
        selector.deep[-1].bias.copy_(logits)
        if profile_weights is not None:
            selector.profile_head.weight.copy_(profile_weights)
