"""ORACLES over fixed models: they pick by the test labels, so they bound, never compete.

Perfect sample-level selector: for each test sample, the model with the lowest LogLoss.
Perfect user-level selector: for each test user, the model with the lowest mean LogLoss.
"""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import sample_losses
from ..random_streams import generator


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


def split_half_user_level(probabilities: np.ndarray, labels: np.ndarray, users: np.ndarray,
                          seed: int = 0) -> np.ndarray:
    """ORACLE, but one a method could approach: each user's test rows are split in two random
    halves; each half is scored by the model with the lowest LogLoss on the other half (so no
    row is predicted by a choice made with its own label). A user with one test row gets the
    model with the lowest LogLoss over every user's test rows. The gap between this and the
    full user-level oracle is the part of the oracle's gain that is noise of the choice."""
    choice = split_half_choices(probabilities, labels, users, seed)
    return probabilities[np.arange(len(labels)), choice]


def split_half_choices(probabilities: np.ndarray, labels: np.ndarray, users: np.ndarray,
                       seed: int = 0) -> np.ndarray:
    """The split-half oracle's model for each row: the lowest-LogLoss model on the other half of
    the row's user's rows."""
    n, k = probabilities.shape
    losses = sample_losses(labels[:, None], probabilities)
    codes, inverse = np.unique(users, return_inverse=True)
    # half 0 / 1: alternate within each user over a random order
    order = np.lexsort((generator(seed, "split-half").random(n), inverse))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.searchsorted(inverse[order], inverse[order])
    half = rank % 2
    per_half = np.zeros((len(codes), 2, k))
    np.add.at(per_half, (inverse, half), losses)
    counts = np.zeros((len(codes), 2))
    np.add.at(counts, (inverse, half), 1)
    fallback = int(losses.mean(axis=0).argmin())
    other = 1 - half
    has_other = counts[inverse, other] > 0
    return np.where(has_other, per_half[inverse, other].argmin(axis=1), fallback)
