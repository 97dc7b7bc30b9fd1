"""Your own data: a CSV or Parquet file of events, its columns named in a columns file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .sources import RawData, add_labels, check_labels, check_numeric, read_table, require_file


@dataclass
class CustomSpec:
    """Column names of a user's own file; see docs/using.md, 'Your own data'."""

    path: Path
    user: str = "user"
    item: str = "item"
    timestamp: str = "timestamp"
    label: str | None = "label"
    rating: str | None = None
    threshold: float = 4.0
    categorical: list[str] = field(default_factory=list)
    multi_hot: list[str] = field(default_factory=list)
    separator: str = "|"


def load_custom(spec: CustomSpec) -> RawData:
    path = require_file(Path(spec.path))
    parquet = path.suffix in (".parquet", ".pq")
    if parquet:
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises several types for a bad file
            raise InputError(f"{path}: not a readable Parquet file ({err})") from None
        header_lines = 0
    else:
        frame = read_table(path, dtype=str, keep_default_na=False)
        header_lines = 1
    value = spec.rating if spec.rating else spec.label
    needed = [spec.user, spec.item, spec.timestamp, value, *spec.categorical, *spec.multi_hot]
    for column in needed:
        if column not in frame.columns:
            raise InputError(f"{path}: column '{column}' not found (columns: {', '.join(map(str, frame.columns))})")
    if len(frame) == 0:
        raise InputError(f"{path}: no rows")
    out = pd.DataFrame({"user": _text(frame[spec.user], path, spec.user, header_lines),
                        "item": _text(frame[spec.item], path, spec.item, header_lines)})
    out["timestamp"] = _unix_seconds(frame[spec.timestamp], path, spec.timestamp, header_lines)
    out["rating"] = frame[value]
    out = check_numeric(out, ["timestamp", "rating"], path,
                         f"numeric '{spec.timestamp}' (Unix seconds) and '{value}'", header_lines)
    out["timestamp"] = out["timestamp"].astype(np.int64)
    if spec.rating:
        out = add_labels(out, spec.threshold)
    else:
        bad = ~out["rating"].isin([0, 1])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}: line {row + 1 + header_lines}: field '{value}' must be 0 or 1")
        out["label"] = out["rating"].astype(np.int8)
    check_labels(out, path)
    for column in spec.categorical:
        out[column] = _text(frame[column], path, column, header_lines, allow_missing=True)
    for column in spec.multi_hot:
        out[column] = _multi_hot(frame[column], spec.separator)
    return RawData("custom", out, {}, [path])


def _text(values: pd.Series, path: Path, column: str, header_lines: int, allow_missing: bool = False) -> np.ndarray:
    """Ids and categories as text; a missing id is an error naming its line."""
    missing = values.isna().to_numpy() | (values.astype(str).str.len() == 0).to_numpy()
    if missing.any() and not allow_missing:
        row = int(np.flatnonzero(missing)[0])
        raise InputError(f"{path}: line {row + 1 + header_lines}: field '{column}' is empty")
    text = values.astype(str).to_numpy()
    if values.dtype.kind == "f" and not missing.any() and (values % 1 == 0).all():
        text = values.astype(np.int64).astype(str).to_numpy()  # ids read as 12.0 are "12"
    return text


def _unix_seconds(values: pd.Series, path: Path, column: str, header_lines: int) -> pd.Series:
    """Datetime columns (a normal Parquet type) as Unix seconds; numbers as they are."""
    if isinstance(values.dtype, pd.DatetimeTZDtype) or values.dtype.kind == "M":
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputError(f"{path}: line {row + 1 + header_lines}: field '{column}' is empty")
        utc = values.dt.tz_convert("UTC") if isinstance(values.dtype, pd.DatetimeTZDtype) else values
        epoch = pd.Timestamp(0, tz="UTC") if isinstance(values.dtype, pd.DatetimeTZDtype) else pd.Timestamp(0)
        return (utc - epoch) // pd.Timedelta(seconds=1)
    return values


def _multi_hot(values: pd.Series, separator: str) -> np.ndarray:
    """'a|b|c' strings, or list columns (Parquet) joined with the separator."""
    def joined(value) -> str:
        if isinstance(value, (list, tuple, np.ndarray)):
            return separator.join(str(v) for v in value)
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

    return np.array([joined(v) for v in values], dtype=object)
