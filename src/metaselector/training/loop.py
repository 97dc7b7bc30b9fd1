"""One training loop for every learner (pretraining, meta-training, Simplified, the sample-level
selector): epochs, one early-stopping rule with a snapshot of the best state, and the learner's
whole state written at every epoch boundary, so that a killed run resumes to the same result.

A learner says how to train one epoch, how to validate, and how to snapshot, restore, save and
load itself; the loop owns the order of those steps (FuxiCTR's `checkpoint_and_earlystop`, once).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol

from .early_stopping import EarlyStopping
from .state import StateFile


class Learner(Protocol):
    def train_epoch(self, epoch: int) -> dict:
        """Train one epoch; return what to record of it (e.g. {"train_loss": ...})."""

    def validate(self, epoch: int) -> tuple[float, dict]:
        """(the value early stopping minimises, anything else to record)."""

    def snapshot(self) -> object:
        """The state to return to if this epoch stays the best (in memory)."""

    def restore(self, snapshot: object) -> None: ...

    def state_dict(self) -> dict:
        """Everything resuming needs: weights, optimizer moments, random generators."""

    def load_state_dict(self, state: dict) -> None: ...


class SelectorSnapshots:
    """snapshot/restore for a learner whose best state is its `selector` module's weights."""

    selector: object

    def snapshot(self) -> dict:
        return copy.deepcopy(self.selector.state_dict())

    def restore(self, snapshot: dict) -> None:
        self.selector.load_state_dict(snapshot)


def fit_with_early_stopping(learner: Learner, epochs: int, patience: int, state: StateFile | None = None,
                            tolerance: float = 1e-6, start_counts: bool = True,
                            on_epoch: Callable[[int, float], None] | None = None) -> EarlyStopping:
    """Train up to `epochs` epochs, stop after `patience` without improvement, end in the best
    state. `start_counts`: the starting point is epoch 0 (kept if no epoch beats it). With
    `state`, a learner that finds a saved state continues from it. `on_epoch(epoch, value)`
    sees each epoch's validation value (hyperparameter search prunes there)."""
    stopper = EarlyStopping(patience, tolerance)
    saved = state.load() if state is not None else None
    if saved is not None:
        learner.load_state_dict(saved["learner"])
        stopper.load_state_dict(saved["stopper"])
    elif start_counts:
        value, record = learner.validate(0)
        stopper.update(0, value, learner.snapshot, **record)
    finished = saved is not None and saved["finished"]
    epoch = stopper.epoch
    while not finished and epoch < epochs:
        epoch += 1
        trained = learner.train_epoch(epoch)
        value, record = learner.validate(epoch)
        stop = stopper.update(epoch, value, learner.snapshot, **trained, **record)
        finished = stop or epoch == epochs
        if state is not None:
            state.save({"finished": finished, "learner": learner.state_dict(), "stopper": stopper.state_dict()})
        if on_epoch is not None:
            on_epoch(epoch, value)
    if stopper.best_state is not None:
        learner.restore(stopper.best_state)
    return stopper
