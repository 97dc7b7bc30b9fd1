"""MetaSelector (Algorithm 1 with Meta-SGD) as a Table 3 row: the estimator itself."""

from __future__ import annotations

import numpy as np

from ..context import TrainingContext
from ..meta_training import meta_train
from .base import Method


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
        self.learner, notes = meta_train(context, self.name, {self.model: context.base.support[self.model]}, None)
        return notes

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        return self.learner.predict(context.tensors, tasks, [t.query for t in tasks])


def methods(config) -> list:
    return [MetaSelectorMethod()]


def ablations(config) -> list:
    return [PerUserAdaptation(name) for name in config.models] if config.ablations else []
