"""Global Blend: one set of weights for every sample, fitted on the meta-training users' query
rows with the support models, applied to the single models."""

from __future__ import annotations

import numpy as np
import torch

from ..context import TrainingContext
from .base import Method, rows_of, split_by_task


class GlobalBlend(Method):
    name = "Global Blend"

    def fit(self, context: TrainingContext) -> dict:
        self.weights = torch.softmax(context.blend_logits, 0).double()
        return {"weights": dict(zip(context.config.models, self.weights.tolist(), strict=True))}

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        p = (context.single_probabilities[rows_of(tasks)].double() @ self.weights).numpy()
        return split_by_task(p, tasks)


def methods(config) -> list[Method]:
    return [GlobalBlend()]
