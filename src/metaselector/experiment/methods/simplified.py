"""MetaSelector-Simplified (paper 4.2): frozen base models, phi trained episodically."""

from __future__ import annotations

import numpy as np

from ...selection.simplified import SimplifiedSelector
from ..context import TrainingContext
from .base import Method


class Simplified(Method):
    name = "MetaSelector-Simplified"

    def fit(self, context: TrainingContext) -> dict:
        meta = context.config.meta
        with context.timer(self.name):
            self.model = SimplifiedSelector(context.new_selector(), context.support_probabilities,
                                            meta.selector_outer_lr, context.device)
            history = self.model.fit(context.tensors, context.train_tasks, context.valid_tasks,
                                     meta.users_per_episode, meta.epochs, meta.patience, context.seed,
                                     context.progress, max_episodes=meta.max_episodes)
            self.model.base = context.test_time_probabilities.float()
        return {"best_epoch": history.best_epoch, "validation_logloss": history.best_validation}

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        return self.model.predict(context.tensors, tasks, [t.query for t in tasks])


def methods(config) -> list[Method]:
    return [Simplified()]
