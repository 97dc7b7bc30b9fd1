"""Batch scoring of files: raw events in (CSV or Parquet), scored candidates out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .io_utils import atomic_write


def read_events(path: Path, needs_label: bool = False) -> pd.DataFrame:
    """A CSV (ids kept as text) or Parquet file of events."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable {'Parquet' if path.suffix in ('.parquet', '.pq') else 'CSV'} "
                         f"file ({str(err).strip().splitlines()[-1] if str(err).strip() else err})") from None
    missing = [c for c in ("user", "item", "timestamp") if c not in frame.columns]
    if needs_label and "rating" not in frame.columns and "label" not in frame.columns:
        missing.append("rating (or label)")
    if missing:
        raise InputError(f"{path}: line 1: missing column(s) {', '.join(missing)} "
                         f"(columns: {', '.join(map(str, frame.columns))})")
    for column in ("timestamp", *(c for c in ("rating", "label") if c in frame.columns)):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            line = f"line {row + 2}" if path.suffix not in (".parquet", ".pq") else f"row {row + 1}"
            raise InputError(f"{path}: {line}: field '{column}' must be a number, got {frame[column].iloc[row]!r}")
        frame[column] = values
    return frame


def score_frame(model, history: pd.DataFrame, candidates: pd.DataFrame) -> pd.DataFrame:
    """The candidates with `probability`, `adapted` and one `weight_<model>` column per base model;
    each user adapts on their rows of `history`."""
    users = candidates["user"].astype(str)
    by_user = dict(tuple(history.groupby(history["user"].astype(str), sort=False)))
    order = list(dict.fromkeys(users))
    positions = [np.flatnonzero(users.to_numpy() == u) for u in order]
    requests = [(by_user.get(u), candidates.iloc[rows]) for u, rows in zip(order, positions, strict=True)]
    scores = model.score_users(requests)
    out = candidates.copy()
    probability = np.empty(len(candidates))
    weights = np.empty((len(candidates), len(model.model_names_)))
    adapted = np.zeros(len(candidates), dtype=bool)
    for rows, s in zip(positions, scores, strict=True):
        probability[rows], weights[rows], adapted[rows] = s.probabilities, s.weights, s.adapted
    out["probability"] = probability
    for k, name in enumerate(model.model_names_):
        out[f"weight_{name}"] = weights[:, k]
    out["adapted"] = adapted
    return out


def write_table(frame: pd.DataFrame, path: Path) -> None:
    with atomic_write(path) as handle:
        if path.suffix in (".parquet", ".pq"):
            frame.to_parquet(handle, index=False)
        else:
            handle.write(frame.to_csv(index=False).encode())
