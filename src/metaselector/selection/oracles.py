"""ORACLES over fixed models: they pick by the test labels, so they bound, never compete.

Perfect sample-level selector: for each test sample, the model with the lowest LogLoss.
Perfect user-level selector: for each test user, the model with the lowest mean LogLoss.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import sample_losses


def perfect_sample_level(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    losses = sample_losses(labels[:, None], probabilities)
    return probabilities[np.arange(len(labels)), losses.argmin(axis=1)]


def best_model_per_user(
    probabilities: np.ndarray, labels: np.ndarray, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(user codes, index of each user's lowest-LogLoss model)."""
    codes, inverse = np.unique(users, return_inverse=True)
    losses = sample_losses(labels[:, None], probabilities)
    per_user = np.zeros((len(codes), probabilities.shape[1]))
    np.add.at(per_user, inverse, losses)
    return codes, per_user.argmin(axis=1)


def perfect_user_level(probabilities: np.ndarray, labels: np.ndarray, users: np.ndarray) -> np.ndarray:
    codes, best = best_model_per_user(probabilities, labels, users)
    choice = best[np.searchsorted(codes, users)]
    return probabilities[np.arange(len(labels)), choice]
