"""Users as tasks: the rows a user adapts on (support) and the rows they are judged on (query)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class UserTask:
    """One user as a task: row indices of their support (adapt) and query (evaluate) data."""

    user: int
    support: np.ndarray
    query: np.ndarray


def tasks_for(users: np.ndarray, support: np.ndarray, query: np.ndarray) -> list[UserTask]:
    """One UserTask per user who has support rows; rows grouped by user in one pass."""
    def grouped(rows):
        order = np.argsort(users[rows], kind="stable")
        rows = rows[order]
        codes, starts = np.unique(users[rows], return_index=True)
        return dict(zip(codes.tolist(), np.split(rows, starts[1:]), strict=True))

    s, q = grouped(support), grouped(query)
    empty = np.empty(0, dtype=np.int64)
    return [UserTask(u, rows, q.get(u, empty)) for u, rows in s.items()]


def sample_tasks(tasks: list[UserTask], limit: int, seed: int) -> list[UserTask]:
    """At most `limit` of `tasks`, drawn without replacement, in their original order."""
    if len(tasks) <= limit:
        return tasks
    keep = np.sort(np.random.default_rng(seed).choice(len(tasks), limit, replace=False))
    return [tasks[i] for i in keep]
