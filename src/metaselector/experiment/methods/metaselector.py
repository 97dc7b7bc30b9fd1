"""The MetaSelector rows of Table 3: the paper's Algorithm 1 with Meta-SGD as section 5.3
states it, the validated extension ([meta] as configured), and the per-user adaptation rows."""

from __future__ import annotations

import numpy as np
import torch

from ...selection.meta_settings import MetaSettings
from ..context import TrainingContext
from ..meta_training import adapted_predictions, meta_train, per_model_learner
from ..paper import paper_meta, start_description
from .base import Method, split_by_task
from .stacking import row_weights

PAPER_ROW = "MetaSelector (paper)"
VALIDATED_ROW = "MetaSelector (validated)"


class MetaSelectorMethod(Method):
    """theta, phi and alpha meta-trained together with `settings`; at test time each user adapts
    on their training rows and the adapted selector mixes the adapted models."""

    keep_user_losses = True
    selects = True

    def __init__(self, name: str, variant: str, settings: MetaSettings) -> None:
        self.name, self.variant, self.settings = name, variant, settings
        self.start = start_description(settings, with_selector=True)

    def fit(self, context: TrainingContext) -> dict:
        self.learner, notes = meta_train(context, self.name, self.settings, list(context.config.models))
        return notes

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        with context.timer(f"{self.name} meta-testing"):
            scored = self.learner.predict(context.tensors, tasks, [t.query for t in tasks],
                                          progress=context.progress, with_weights=True)
        self.last_weights = [w for _, w in scored]
        return [p for p, _ in scored]


class PerUserAdaptation(Method):
    """One base model, meta-trained and adapted per user without a selector: how much of
    MetaSelector's gain per-user adaptation alone gives (beyond the paper)."""

    def __init__(self, model: str, settings: MetaSettings) -> None:
        self.model, self.name, self.settings = model, f"{model} + per-user adaptation", settings
        self.start = start_description(settings, with_selector=False)

    def fit(self, context: TrainingContext) -> dict:
        # Shared with the adaptation-then-blend row (and the validated row's start).
        _, notes = per_model_learner(context, self.model)
        return notes

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        return adapted_predictions(context, self.model, tasks)


def methods(config) -> list:
    return [MetaSelectorMethod(PAPER_ROW, "paper", paper_meta(config.meta)),
            MetaSelectorMethod(VALIDATED_ROW, "extension", config.meta)]


def ablations(config) -> list:
    return [PerUserAdaptation(name, config.meta) for name in config.models] if config.ablations else []


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
        return split_by_task(adapted_probabilities(context, tasks) @ self.weights, tasks)


class AdaptationThenStacking(Method):
    """Every base model adapted per user, then mixed by feature-weighted stacking's weights (a
    linear function of the user's profile): the validated selector's "profile-stacking" start."""

    name = "Per-user adaptation + Feature-weighted Stacking"

    def fit(self, context: TrainingContext) -> dict:
        for model in context.config.models:
            per_model_learner(context, model)
        self.weights = context.profile_blend
        return {}

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        blend = row_weights(context, tasks, self.weights).numpy()
        return split_by_task((blend * adapted_probabilities(context, tasks)).sum(axis=1), tasks)


def adapted_probabilities(context: TrainingContext, tasks) -> np.ndarray:
    """Each base model's per-user-adaptation learner's probabilities [N, K] for the tasks' query rows."""
    return np.stack([np.concatenate(adapted_predictions(context, m, tasks)) for m in context.config.models],
                    axis=1)


def adaptation_then_blend(config) -> list:
    return [AdaptationThenBlend(), AdaptationThenStacking()] if config.ablations else []
