"""The interface every selection method of Table 3 implements."""

from __future__ import annotations

import numpy as np

from ...selection.meta_settings import MetaSettings
from ...selection.tasks import UserTask
from ..context import TrainingContext


class Method:
    """Fit on a seed's training context, then predict for tasks: each task's `query` rows,
    after adapting (where the method adapts) on its `support` rows. Test tasks' support is
    the user's training rows, their query the test rows."""

    name: str = ""
    # "paper": a method of the paper, run as the paper states it; "extension": beyond the paper
    variant: str = "extension"
    oracle: bool = False  # chooses with the test labels: an upper bound, not a method
    keep_user_losses: bool = False  # per-user losses kept for Figure 3 and the paired test
    # Meta-trained rows: the [meta] settings they ran, and what they are when early stopping
    # keeps their start (best epoch 0).
    settings: MetaSettings | None = None
    start: str = ""
    selects: bool = False  # a meta-trained selector: its [meta] settings are compared with the paper's
    # The selector's weights of the last `predict` call, one [n, K] array per task (rows that
    # have a per-user selector), for the selector diagnostics.
    last_weights: list[np.ndarray] | None = None

    def fit(self, context: TrainingContext) -> dict:
        """Train; returns notes for training_notes.json."""
        return {}

    def predict(self, context: TrainingContext, tasks: list[UserTask]) -> list[np.ndarray]:
        raise NotImplementedError


def rows_of(tasks: list[UserTask]) -> np.ndarray:
    return np.concatenate([t.query for t in tasks]) if tasks else np.empty(0, dtype=np.int64)


def split_by_task(values: np.ndarray, tasks: list[UserTask]) -> list[np.ndarray]:
    return np.split(values, np.cumsum([len(t.query) for t in tasks])[:-1]) if tasks else []
