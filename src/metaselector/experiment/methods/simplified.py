"""MetaSelector-Simplified (paper 4.2): frozen base models, phi trained episodically, with the
paper row's settings (selector on x only, equal-weight start, outer rate inner_lr / 10)."""

from __future__ import annotations

import numpy as np

from ...random_streams import int_seed
from ...selection.simplified import SimplifiedSelector
from ...training.state import StateFile
from ..context import TrainingContext
from ..meta_training import carries_over
from ..paper import paper_meta
from .base import Method


class Simplified(Method):
    name = "MetaSelector-Simplified"
    variant = "paper"
    selects = True

    def __init__(self, settings) -> None:
        self.settings = settings
        blend = "the global blend's weights" if settings.selector_start == "global-mixture" else "equal weights"
        self.start = f"the frozen models mixed by {blend} for every user"

    def fit(self, context: TrainingContext) -> dict:
        meta = self.settings
        # Frozen models: those the selector learns on, and those it weights at test time.
        learned_on = context.support_probabilities if meta.pretrain_on == "support" else \
            context.single_probabilities
        with context.timer(self.name):
            self.model = SimplifiedSelector(context.new_selector(meta), learned_on, meta.selector_outer_lr,
                                            context.device)
            history = self.model.fit(context.tensors, context.train_tasks, context.valid_tasks,
                                     meta.users_per_episode, meta.epochs, meta.patience,
                                     int_seed(context.seed, "simplified"),
                                     context.progress, max_episodes=meta.max_episodes,
                                     state=StateFile.named(context.state_dir, "simplified"))
            if carries_over(meta):
                self.model.base = context.single_probabilities.float()
        return {"best_epoch": history.best_epoch, "validation_logloss": history.best_validation}

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        return self.model.predict(context.tensors, tasks, [t.query for t in tasks])


def methods(config) -> list[Method]:
    return [Simplified(paper_meta(config.meta))]
