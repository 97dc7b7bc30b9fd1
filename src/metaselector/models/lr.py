"""Logistic regression over the one-hot (and mean-pooled multi-hot) features."""

from __future__ import annotations

import torch
from torch import nn

from .base import BaseModel, Batch, linear_term, register_model


@register_model("LR")
class LR(BaseModel):
    table_names = ("linear",)
    # FTRL-trained: its rates are the [pretrain] ftrl_* settings, not searched per model
    search_space: dict = {}

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        # Zero start: FTRL-Proximal derives weights from its accumulators, which start at 0.
        self.linear = nn.Parameter(torch.zeros(layout.num_features, 1))
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> torch.Tensor:
        return linear_term(self.linear, self.bias, batch)
