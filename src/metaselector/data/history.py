"""Which earlier events of the same user are a sample's history: one function for offline
datasets and online requests, so both give the same history slots."""

from __future__ import annotations

import numpy as np
import pandas as pd


def as_keys(values: pd.Series | np.ndarray) -> pd.Series:
    """Raw ids as the strings the vocabularies hold (1 and "1" are the same user)."""
    series = pd.Series(values)
    if series.dtype.kind == "f" and series.notna().all() and (series % 1 == 0).all():
        series = series.astype(np.int64)  # 12.0 read from JSON is id "12"
    return series.astype(str)


def group_codes(users: pd.Series, history_users: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Users of the events and of the history as codes of one shared, request-local numbering."""
    keys = pd.concat([as_keys(users), as_keys(history_users)], ignore_index=True)
    codes, _ = pd.factorize(keys)
    return codes[:len(users)].astype(np.int64), codes[len(users):].astype(np.int64)


def history_positions(users: tuple[np.ndarray, np.ndarray], times: np.ndarray, h_times: np.ndarray,
                      h_items: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into the history) of each event's `length` latest history events of the same
    user strictly before its timestamp, oldest first, and a validity mask.

    History events are ordered by (user, timestamp, item code) first: the order offline
    encoding sees them in, so the slots come out in the same order either way."""
    e_users, h_users = users
    # (user, time) pairs as one sortable key: time ranks among all the times seen
    all_times = np.unique(np.concatenate([times, h_times]))
    e_key = e_users * (len(all_times) + 1) + np.searchsorted(all_times, times)
    h_key = h_users * (len(all_times) + 1) + np.searchsorted(all_times, h_times)
    order = np.lexsort((h_items, h_key))
    sorted_key = h_key[order]
    end = np.searchsorted(sorted_key, e_key, side="left")  # first history event at or after the time
    start = np.searchsorted(sorted_key, e_users * (len(all_times) + 1), side="left")
    positions = end[:, None] - length + np.arange(length)[None, :]
    valid = positions >= start[:, None]
    safe = np.clip(positions, 0, max(len(order) - 1, 0))
    return (order[safe] if len(order) else np.zeros_like(safe)), valid
