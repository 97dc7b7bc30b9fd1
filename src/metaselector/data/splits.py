"""Per-user splits: train/test, then support/query inside train, optionally new users.

Everything is drawn from one seed. A user is a task: their samples are divided, never
shared between parts. Users too small to split are dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, InputError
from ..random_streams import generator


@dataclass
class Split:
    """Row indices (into an EncodedDataset) of each part, and the users of each role."""

    support: np.ndarray
    query: np.ndarray
    test: np.ndarray
    new_support: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    new_test: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    dropped_users: int = 0
    dropped_samples: int = 0
    training_users: int = 0  # users whose rows are split into support, query (and test)

    @property
    def train(self) -> np.ndarray:
        return np.sort(np.concatenate([self.support, self.query]))

    def parts(self) -> dict[str, np.ndarray]:
        return {"support": self.support, "query": self.query, "test": self.test,
                "new_support": self.new_support, "new_test": self.new_test}


MIN_SAMPLES = 4  # one test sample, and a support and a query sample in train


def split_users(
    users: np.ndarray,
    timestamps: np.ndarray,
    seed: int,
    test_fraction: float = 0.2,
    query_fraction: float = 0.25,
    temporal: bool = False,
    new_users: float = 0.0,
) -> Split:
    """Split rows (sorted by user) per user; see module docstring."""
    if not 0 <= test_fraction < 1 or not 0 < query_fraction < 1:
        raise ConfigError("split fractions must lie in [0, 1) (test) and (0, 1) (query)")
    if not 0 <= new_users < 1:
        raise ConfigError(f"new_users must be in [0, 1), got {new_users}")
    rng = generator(seed, "split")
    n = len(users)
    counts = np.bincount(users)
    n_train = np.rint(counts * (1 - test_fraction)).astype(np.int64)
    n_support = np.rint(n_train * (1 - query_fraction)).astype(np.int64)
    big_enough = (counts >= MIN_SAMPLES) & (n_support >= 1) & (n_support < n_train)
    if test_fraction > 0:
        big_enough &= n_train < counts
    # Rank each row within its user: by time (temporal) or by a random key.
    key = timestamps.astype(np.float64) + rng.random(n) * 1e-3 if temporal else rng.random(n)
    order = np.lexsort((key, users))
    rank = np.empty(n, dtype=np.int64)
    group_start = np.searchsorted(users[order], users[order], side="left")
    rank[order] = np.arange(n) - group_start
    row_train = rank < n_train[users]
    if temporal:
        # Inside train, the query part is the later quarter as well.
        row_support = rank < n_support[users]
    else:
        # A fresh random order inside train, so support/query is independent of train/test.
        second = rng.random(n)
        second[~row_train] = np.inf
        order2 = np.lexsort((second, users))
        rank2 = np.empty(n, dtype=np.int64)
        rank2[order2] = np.arange(n) - group_start
        row_support = row_train & (rank2 < n_support[users])
    kept_users = np.flatnonzero(big_enough)
    is_new = np.zeros(len(counts), dtype=bool)
    if new_users > 0:
        chosen = rng.choice(kept_users, size=max(1, int(round(new_users * len(kept_users)))), replace=False)
        is_new[chosen] = True
    row_kept = big_enough[users]
    row_new = is_new[users]
    old = row_kept & ~row_new
    new = row_kept & row_new
    return Split(
        support=np.flatnonzero(old & row_support),
        query=np.flatnonzero(old & row_train & ~row_support),
        test=np.flatnonzero(old & ~row_train),
        new_support=np.flatnonzero(new & row_train),
        new_test=np.flatnonzero(new & ~row_train),
        dropped_users=int((~big_enough & (counts > 0)).sum()),
        dropped_samples=int((~row_kept).sum()),
        training_users=int((big_enough & ~is_new).sum()),
    )


def require_usable(split: Split, labels: np.ndarray, dataset: str) -> None:
    """Refuse, before any training, data that leaves nothing to train on."""
    if len(split.support) == 0 or len(split.query) == 0:
        raise InputError(f"dataset '{dataset}': no user has the {MIN_SAMPLES} or more samples needed to split "
                         f"into support, query and test rows ({split.dropped_users} users dropped)")
    if split.training_users < 2:
        raise InputError(f"dataset '{dataset}': {split.training_users} user has the {MIN_SAMPLES} or more samples "
                         f"needed to split ({split.dropped_users} users dropped, others held out as new users): "
                         "MetaSelector learns across users, so it needs at least 2")
    train_labels = np.unique(labels[split.train])
    if len(train_labels) < 2:
        raise InputError(f"dataset '{dataset}': the training rows hold only label {int(train_labels[0])}; "
                         "training needs both classes")
