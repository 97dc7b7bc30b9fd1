"""MetaSelector (Algorithm 1 with Meta-SGD) as a Table 3 row: the estimator itself."""

from __future__ import annotations

import numpy as np
import torch

from ..context import TrainingContext
from ..meta_training import per_model_learner
from .base import Method, split_by_task


class MetaSelectorMethod(Method):
    name = "MetaSelector"
    keep_user_losses = True

    def fit(self, context: TrainingContext) -> dict:
        from ...estimator import MetaSelector

        self.estimator = MetaSelector(config=context.config, seed=context.seed)._fit_context(context)
        return self.estimator.training_notes_

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        with context.timer(f"{self.name} meta-testing"):
            return self.estimator.learner_.predict(context.tensors, tasks, [t.query for t in tasks],
                                                   progress=context.progress)


class PerUserAdaptation(Method):
    """One base model, meta-trained and adapted per user without a selector: how much of
    MetaSelector's gain per-user adaptation alone gives (beyond the paper)."""

    def __init__(self, model: str) -> None:
        self.model, self.name = model, f"{model} + per-user adaptation"

    def fit(self, context: TrainingContext) -> dict:
        # Shared with the adaptation-then-blend row (and MetaSelector's start, model_start = "adapted").
        self.learner, notes = per_model_learner(context, self.model)
        return notes

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        return self.learner.predict(context.tensors, tasks, [t.query for t in tasks])


def methods(config) -> list:
    return [MetaSelectorMethod()]


def ablations(config) -> list:
    return [PerUserAdaptation(name) for name in config.models] if config.ablations else []


class AdaptationThenBlend(Method):
    """Every base model adapted per user (the rows above), then mixed by the Global Blend's
    weights: the simple alternative to learning the mixture per user."""

    name = "Per-user adaptation + Global Blend"

    def fit(self, context: TrainingContext) -> dict:
        for model in context.config.models:
            per_model_learner(context, model)
        self.weights = np.asarray(torch.softmax(context.blend_logits.double(), 0))
        return {}

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        queries = [t.query for t in tasks]
        per_model = [np.concatenate(per_model_learner(context, m)[0].predict(context.tensors, tasks, queries))
                     for m in context.config.models]
        p = np.stack(per_model, axis=1) @ self.weights
        return split_by_task(p, tasks)


def adaptation_then_blend(config) -> list:
    return [AdaptationThenBlend()] if config.ablations else []
