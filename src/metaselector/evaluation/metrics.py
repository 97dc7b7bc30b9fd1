"""AUC, LogLoss, RelImpr (paper eq. 7), user-averaged AUC and per-user LogLoss."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

EPS = 1e-7


def clip(probabilities: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)


def auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """AUC pooled over all samples, as the paper."""
    return float(roc_auc_score(labels, probabilities))


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, with predictions clipped to [1e-7, 1 - 1e-7]."""
    return float(log_loss(labels, clip(probabilities), labels=[0, 1]))


def sample_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    p = clip(probabilities)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def relimpr(auc_value: float, best_single_auc: float) -> float:
    """(AUC - 0.5) / (best single AUC - 0.5) - 1, in percent."""
    return ((auc_value - 0.5) / (best_single_auc - 0.5) - 1.0) * 100.0


def per_user_logloss(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user codes, mean LogLoss of each user), users in ascending order."""
    codes, inverse = np.unique(users, return_inverse=True)
    losses = np.bincount(inverse, weights=sample_losses(labels, probabilities))
    return codes, losses / np.bincount(inverse)


def gauc(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean of per-user AUCs over users whose test samples hold both labels (unweighted)."""
    order = np.argsort(users, kind="stable")
    users, labels, probabilities = users[order], labels[order], probabilities[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    values = []
    for y, p in zip(np.split(labels, bounds), np.split(probabilities, bounds), strict=True):
        if 0 < y.sum() < len(y):
            values.append(roc_auc_score(y, p))
    return float(np.mean(values)) if values else float("nan")


def summary(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probabilities), "logloss": logloss(labels, probabilities),
            "gauc": gauc(users, labels, probabilities)}
