"""The single base models (Table 3's first rows) and the oracles over them."""

from __future__ import annotations

import numpy as np

from ...selection import oracles
from ..context import TrainingContext
from .base import Method, rows_of, split_by_task


class SingleModel(Method):
    """One base model: the support model continued on all training rows."""

    keep_user_losses = True

    def __init__(self, name: str, index: int) -> None:
        self.name, self.index = name, index

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        p = context.single_probabilities[rows_of(tasks), self.index].double().numpy()
        return split_by_task(p, tasks)


class PerfectSampleLevel(Method):
    """ORACLE: for each sample, the single model with the lowest LogLoss on its label."""

    name, oracle = "Perfect Sample-level Selector", True

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        rows = rows_of(tasks)
        p = oracles.perfect_sample_level(context.single_probabilities[rows].double().numpy(),
                                         context.data.labels[rows])
        return split_by_task(p, tasks)


class PerfectUserLevel(Method):
    """ORACLE: for each user, the single model with the lowest mean LogLoss on their test labels."""

    name, oracle = "Perfect User-level Selector", True

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        rows = rows_of(tasks)
        p = oracles.perfect_user_level(context.single_probabilities[rows].double().numpy(),
                                       context.data.labels[rows], context.data.users[rows])
        return split_by_task(p, tasks)


class SplitHalfUserLevel(Method):
    """ORACLE: each user's model chosen on one half of their test rows, scored on the other half
    (both ways): how much of the user-level oracle's gain a per-user choice can realistically get."""

    name, oracle = "Split-half User-level Selector", True

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        rows = rows_of(tasks)
        p = oracles.split_half_user_level(context.single_probabilities[rows].double().numpy(),
                                          context.data.labels[rows], context.data.users[rows], context.seed)
        return split_by_task(p, tasks)


def methods(config) -> list[Method]:
    return [SingleModel(name, k) for k, name in enumerate(config.models)] + [
        PerfectSampleLevel(), PerfectUserLevel(), SplitHalfUserLevel()]
