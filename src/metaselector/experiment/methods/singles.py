"""The single base models (Table 3's first rows) and the oracles over them."""

from __future__ import annotations

import numpy as np

from ...selection import oracles
from ..context import TrainingContext
from ..paper import PAPER
from .base import Method, rows_of, split_by_task

PAPER_MODELS = PAPER["models"].movielens


class SingleModel(Method):
    """One base model: the support model continued on all training rows."""

    keep_user_losses = True

    def __init__(self, name: str, index: int, variant: str) -> None:
        self.name, self.index, self.variant = name, index, variant

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        p = context.single_probabilities[rows_of(tasks), self.index].double().numpy()
        return split_by_task(p, tasks)


class Oracle(Method):
    """An ORACLE over the single models: it chooses with the test labels, so it bounds, never
    competes (selection/oracles.py says how each one chooses)."""

    oracle = True

    def __init__(self, name: str, choose, variant: str = "paper") -> None:
        self.name, self.choose, self.variant = name, choose, variant

    def predict(self, context: TrainingContext, tasks) -> list[np.ndarray]:
        rows = rows_of(tasks)
        data = context.data
        p = self.choose(context.single_probabilities[rows].double().numpy(), data.labels[rows], data.users[rows],
                        context.seed)
        return split_by_task(p, tasks)


def methods(config) -> list[Method]:
    # the paper's four models are its rows; any other base model is an extension
    return [SingleModel(name, k, "paper" if name in PAPER_MODELS else "extension")
            for k, name in enumerate(config.models)] + [
        # per sample: the model with the lowest LogLoss on its label
        Oracle("Perfect Sample-level Selector", lambda p, y, users, seed: oracles.perfect_sample_level(p, y)),
        # per user: the model with the lowest mean LogLoss on their test labels
        Oracle("Perfect User-level Selector", lambda p, y, users, seed: oracles.perfect_user_level(p, y, users)),
        # per user, chosen on one half of their test rows, scored on the other (both ways)
        Oracle("Split-half User-level Selector", oracles.split_half_user_level, variant="extension")]
