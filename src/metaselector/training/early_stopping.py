"""One early-stopping rule for every trainer: keep the best epoch, stop after `patience`
epochs without an improvement larger than `tolerance`."""

from __future__ import annotations

from collections.abc import Callable


class EarlyStopping:
    def __init__(self, patience: int, tolerance: float = 1e-6) -> None:
        self.patience, self.tolerance = patience, tolerance
        self.best_value = float("inf")
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0
        self.epoch = 0  # the last epoch recorded
        self.history: list[dict] = []

    def update(self, epoch: int, value: float, snapshot: Callable[[], dict], **record) -> bool:
        """Record an epoch's validation value (lower is better); keep `snapshot()` if it is the
        best so far. Epoch 0 (the starting point) sets the bar without counting as a bad epoch.
        Returns True when training should stop."""
        self.epoch = epoch
        self.history.append({"epoch": epoch, **record, "validation_logloss": value})
        if value < self.best_value - self.tolerance:
            self.best_value, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = snapshot()
            return False
        if epoch > 0:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_state": self.best_state,
                "bad_epochs": self.bad_epochs, "epoch": self.epoch, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
