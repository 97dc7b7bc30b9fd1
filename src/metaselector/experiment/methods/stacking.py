"""Feature-weighted stacking (Sill et al. 2009): blend weights as a function of user
meta-features, the classic per-user blending baseline.

w(u) = softmax(A f(u)), with f(u) = [1, the user's standardised profile from their training
events (selection/user_profile.py): log event count, shrunk positive rate, mean item
popularity, shrunk rating mean and spread, log mean days between events]. A is fitted on
out-of-fold predictions: the support models on the query rows of the meta-training users (rows
those models never trained on), with an L2 penalty on the user-dependent columns (the shrinkage), chosen among a few
strengths on the held-out training users' query rows. At test time each user's features come
from their training rows and the weights mix the single models.
"""

from __future__ import annotations

import numpy as np
import torch

from ..context import TrainingContext
from .base import Method, rows_of, split_by_task

PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)


def user_features(context: TrainingContext, tasks) -> torch.Tensor:
    """[1, the user's standardised profile] per task, from their support rows."""
    profile = context.user_profile.features(context.tensors, [t.support for t in tasks]).double()
    return torch.cat([torch.ones(len(tasks), 1, dtype=torch.float64), profile], dim=1)


def _fit(features: torch.Tensor, p: torch.Tensor, y: torch.Tensor, start: torch.Tensor, penalty: float):
    weights = torch.zeros(p.shape[1], features.shape[1], dtype=torch.float64)
    weights[:, 0] = start
    weights.requires_grad_(True)
    optimizer = torch.optim.LBFGS([weights], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        mixed = (torch.softmax(features @ weights.T, dim=1) * p).sum(dim=1).clamp(1e-7, 1 - 1e-7)
        loss = torch.nn.functional.binary_cross_entropy(mixed, y) + penalty * weights[:, 1:].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach()


def _loss(weights, features, p, y) -> float:
    mixed = (torch.softmax(features @ weights.T, dim=1) * p).sum(dim=1).clamp(1e-7, 1 - 1e-7)
    return float(torch.nn.functional.binary_cross_entropy(mixed, y))


def _rows(context: TrainingContext, tasks):
    """Per query row: its user's features, the support models' predictions, the label."""
    features = user_features(context, tasks)
    owner = np.repeat(np.arange(len(tasks)), [len(t.query) for t in tasks])
    rows = rows_of(tasks)
    return features[owner], context.support_probabilities[rows].double(), \
        torch.as_tensor(context.data.labels[rows], dtype=torch.float64)


def fit_profile_blend(context: TrainingContext) -> tuple[torch.Tensor, dict]:
    """The weights A [K, 1 + F] fitted on the meta-training users' query rows from the global
    blend's start, the penalty chosen on the held-out training users' query rows; and notes."""
    start = context.blend_logits.double()
    fit_rows = _rows(context, context.train_tasks)
    check_rows = _rows(context, context.valid_tasks) if context.valid_tasks else fit_rows
    fitted = {penalty: _fit(*fit_rows, start, penalty) for penalty in PENALTIES}
    losses = {penalty: _loss(w, *check_rows) for penalty, w in fitted.items()}
    penalty = min(losses, key=losses.get)
    return fitted[penalty], {"penalty": penalty, "validation_logloss_by_penalty": losses}


class FeatureWeightedStacking(Method):
    name = "Feature-weighted Stacking"

    def fit(self, context: TrainingContext) -> dict:
        self.weights = context.profile_blend
        return context.notes["profile_blend"]

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        blend = row_weights(context, tasks, self.weights)
        p = (blend * context.single_probabilities[rows_of(tasks)].double()).sum(dim=1).numpy()
        return split_by_task(p, tasks)


def row_weights(context: TrainingContext, tasks, weights: torch.Tensor) -> torch.Tensor:
    """The blend weights [N, K] of every query row of `tasks`: softmax(A f(u)) of its user."""
    owner = np.repeat(np.arange(len(tasks)), [len(t.query) for t in tasks])
    return torch.softmax(user_features(context, tasks)[owner] @ weights.T, dim=1)


def methods(config) -> list[Method]:
    return [FeatureWeightedStacking()]
