"""The paper's feature set, encoded into one global index space.

Every field (user_id, movie_genre, user_history_movie, ...) gets a contiguous block of
feature ids; id 0 is padding or unknown. A sample becomes `ids` [S] and `weights` [S]
over a fixed list of slots: one slot per categorical field, several per multi-hot field,
whose weights mean-pool the field (1/len each, counts for repeated history tags).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from .sources import RawData

SOURCES = ("user", "item", "item_tags", "history_items", "history_tags", "dow", "season")


@dataclass(frozen=True)
class FieldSpec:
    """One feature field. `source` is one of SOURCES, or `col:NAME` / `multi:NAME` for side columns."""

    name: str
    source: str


@dataclass(frozen=True)
class FeatureSpec:
    fields: tuple[FieldSpec, ...]
    history_length: int = 10
    max_tags: int = 8  # slots kept per item for its tags
    max_history_tags: int = 24  # slots kept for the pooled tags of the history items
    multi_separator: str = "|"

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _fields(*pairs: str) -> tuple[FieldSpec, ...]:
    return tuple(FieldSpec(*pair.split("=")) for pair in pairs)


MOVIELENS_FIELDS = _fields(
    "user_id=user", "age=col:age", "gender=col:gender", "occupation=col:occupation",
    "user_history_genre=history_tags", "user_history_movie=history_items", "movie_id=item",
    "movie_genre=item_tags", "day_of_week=dow", "season=season",
)
FEATURE_SPECS: dict[str, FeatureSpec] = {
    "movielens-1m": FeatureSpec(MOVIELENS_FIELDS),
    "movielens-100k": FeatureSpec(MOVIELENS_FIELDS),
    # No demographics in the latest releases: the MovieLens set without them.
    "ml-latest-small": FeatureSpec(tuple(f for f in MOVIELENS_FIELDS if not f.source.startswith("col:"))),
    "amazon-electronics": FeatureSpec(
        _fields("user_id=user", "item_id=item", "item_category=item_tags", "season=season",
                "user_history_item=history_items", "user_history_categories=history_tags"),
        history_length=5,
    ),
}


def custom_feature_spec(categorical: list[str], multi_hot: list[str], history_length: int = 10) -> FeatureSpec:
    fields = [FieldSpec("user_id", "user"), FieldSpec("item_id", "item")]
    fields += [FieldSpec(c, f"col:{c}") for c in categorical]
    fields += [FieldSpec(c, f"multi:{c}") for c in multi_hot]
    fields += [FieldSpec("user_history_item", "history_items"), FieldSpec("day_of_week", "dow"),
               FieldSpec("season", "season")]
    return FeatureSpec(tuple(fields), history_length=history_length)


@dataclass
class Field:
    name: str
    kind: str  # "categorical" or "multi-hot"
    offset: int  # first global id of the field's vocabulary
    size: int  # vocabulary size
    slot_start: int
    slot_stop: int
    vocabulary: list[str] = field(default_factory=list, repr=False)


@dataclass
class FeatureLayout:
    fields: list[Field]
    num_features: int  # size of the global index space, padding id 0 included

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    @property
    def num_slots(self) -> int:
        return self.fields[-1].slot_stop if self.fields else 0

    def field_of_slot(self) -> np.ndarray:
        out = np.empty(self.num_slots, dtype=np.int64)
        for index, f in enumerate(self.fields):
            out[f.slot_start:f.slot_stop] = index
        return out

    def field_index(self, name: str) -> int:
        for index, f in enumerate(self.fields):
            if f.name == name:
                return index
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"num_features": self.num_features, "fields": [asdict(f) for f in self.fields]}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureLayout:
        return cls([Field(**f) for f in data["fields"]], data["num_features"])


@dataclass
class EncodedDataset:
    """All samples of a dataset in the encoded batch format, sorted by user then time."""

    name: str
    layout: FeatureLayout
    ids: np.ndarray  # int32 [N, S]; 0 = padding
    weights: np.ndarray  # float32 [N, S]
    labels: np.ndarray  # float32 [N]
    users: np.ndarray  # int64 [N], user code 0..U-1
    items: np.ndarray  # int64 [N], item code
    timestamps: np.ndarray  # int64 [N]
    user_names: np.ndarray  # original user id per user code (strings)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_names)

    def statistics(self) -> dict:
        return {
            "users": int(len(np.unique(self.users))),
            "items": int(len(np.unique(self.items))),
            "samples": int(len(self.labels)),
            "features": int(self.layout.num_features),
            "positive_rate": round(float(self.labels.mean()), 6) if len(self.labels) else 0.0,
            "fields": self.layout.num_fields,
            "slots": self.layout.num_slots,
        }


def bag(rows: np.ndarray, codes: np.ndarray, n_rows: int, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pool (row, code) pairs into padded bags: codes [n_rows, W] (-1 = empty), mean weights.

    A code repeated within a row becomes one slot whose weight counts the repeats, so the
    weights of a row are its tags' frequencies (summing to 1), and W is at most `cap`.
    """
    if len(rows) == 0:
        return np.full((n_rows, 1), -1, dtype=np.int64), np.zeros((n_rows, 1), dtype=np.float32)
    span = int(codes.max()) + 1
    keys, counts = np.unique(rows.astype(np.int64) * span + codes, return_counts=True)
    key_rows, key_codes = keys // span, keys % span
    position = np.arange(len(keys)) - np.searchsorted(key_rows, key_rows, side="left")
    keep = position < cap
    key_rows, key_codes, counts, position = key_rows[keep], key_codes[keep], counts[keep], position[keep]
    width = int(position.max()) + 1
    out_codes = np.full((n_rows, width), -1, dtype=np.int64)
    out_weights = np.zeros((n_rows, width), dtype=np.float32)
    out_codes[key_rows, position] = key_codes
    out_weights[key_rows, position] = counts
    totals = out_weights.sum(axis=1, keepdims=True)
    np.divide(out_weights, totals, out=out_weights, where=totals > 0)
    return out_codes, out_weights


def history_positions(users: np.ndarray, timestamps: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of each sample's `length` most recent earlier interactions, and a mask.

    Rows must be sorted by user then time. Only interactions strictly before the sample's
    timestamp count: samples sharing a timestamp never see each other.
    """
    n = len(users)
    group_start = np.searchsorted(users, users, side="left")
    order_key = np.stack([users, timestamps])
    # First row of each (user, timestamp) block: the history ends just before it.
    same_as_previous = np.zeros(n, dtype=bool)
    same_as_previous[1:] = (order_key[:, 1:] == order_key[:, :-1]).all(axis=0)
    block_start = np.maximum.accumulate(np.where(same_as_previous, 0, np.arange(n)))
    positions = block_start[:, None] - length + np.arange(length)[None, :]
    valid = positions >= group_start[:, None]
    return np.where(valid, positions, 0), valid


def _categorical(values: pd.Series | np.ndarray) -> tuple[np.ndarray, list[str]]:
    codes, uniques = pd.factorize(pd.Series(values).astype(str), sort=True)
    unknown = np.isin(np.asarray(uniques), ["nan", "None", ""])
    if unknown.any():  # missing side information becomes padding id 0
        remap = np.cumsum(~unknown) - 1
        remap[unknown] = -1
        codes = np.where(codes >= 0, remap[codes], -1)
        uniques = np.asarray(uniques)[~unknown]
    return codes.astype(np.int64), [str(u) for u in uniques]


def encode(raw: RawData, spec: FeatureSpec) -> EncodedDataset:
    """Encode a parsed dataset into the global feature space of `spec`."""
    frame = raw.interactions
    if len(frame) == 0:
        raise InputError(f"{raw.files[0] if raw.files else raw.name}: no interactions")
    user_codes, user_vocab = _categorical(frame["user"])
    item_codes, item_vocab = _categorical(frame["item"])
    timestamps = frame["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((item_codes, timestamps, user_codes))
    frame = frame.iloc[order].reset_index(drop=True)
    user_codes, item_codes, timestamps = user_codes[order], item_codes[order], timestamps[order]
    n = len(frame)

    # Tags of each item (genres, categories): codes [n_items, T].
    tag_lists = [raw.item_tags.get(_native(name), []) for name in _item_keys(frame, item_codes, item_vocab)]
    tag_vocab = sorted({t for tags in tag_lists for t in tags})
    tag_index = {t: i for i, t in enumerate(tag_vocab)}
    tag_rows = np.repeat(np.arange(len(tag_lists)), [len(t) for t in tag_lists])
    tag_codes = np.array([tag_index[t] for tags in tag_lists for t in tags], dtype=np.int64)
    item_tag_codes, _ = bag(tag_rows, tag_codes, len(tag_lists), spec.max_tags)

    hist_pos, hist_valid = None, None
    if any(f.source.startswith("history") for f in spec.fields):
        hist_pos, hist_valid = history_positions(user_codes, timestamps, spec.history_length)

    blocks_ids: list[np.ndarray] = []
    blocks_weights: list[np.ndarray] = []
    fields: list[Field] = []
    offset, slot = 1, 0
    for fs in spec.fields:
        if fs.source == "user":
            codes, vocab, kind = user_codes[:, None], user_vocab, "categorical"
            weights = np.ones((n, 1), dtype=np.float32)
        elif fs.source == "item":
            codes, vocab, kind = item_codes[:, None], item_vocab, "categorical"
            weights = np.ones((n, 1), dtype=np.float32)
        elif fs.source.startswith("col:"):
            column = _column(frame, fs.source[4:], fs.name)
            values, vocab = _categorical(frame[column])
            codes, kind = values[:, None], "categorical"
            weights = (codes >= 0).astype(np.float32)
        elif fs.source.startswith("multi:"):
            column = _column(frame, fs.source[6:], fs.name)
            exploded = frame[column].astype(str).str.split(spec.multi_separator).explode()
            exploded = exploded[exploded.str.len() > 0]
            values, vocab = _categorical(exploded)
            codes, weights = bag(exploded.index.to_numpy(), values, n, spec.max_tags)
            kind = "multi-hot"
        elif fs.source == "item_tags":
            codes, vocab, kind = item_tag_codes[item_codes], tag_vocab, "multi-hot"
            weights = _mean_weights(codes)
        elif fs.source == "history_items":
            codes = np.where(hist_valid, item_codes[hist_pos], -1)
            vocab, kind = item_vocab, "multi-hot"
            weights = _mean_weights(codes)
        elif fs.source == "history_tags":
            per_row = item_tag_codes[item_codes[hist_pos]]  # [n, L, T]
            per_row[~hist_valid] = -1
            flat = per_row.reshape(n, -1)
            rows, cols = np.nonzero(flat >= 0)
            codes, weights = bag(rows, flat[rows, cols], n, spec.max_history_tags)
            vocab, kind = tag_vocab, "multi-hot"
        elif fs.source == "dow":
            codes = ((timestamps // 86400 + 3) % 7)[:, None]  # 1970-01-01 was a Thursday; Monday = 0
            vocab, kind = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], "categorical"
            weights = np.ones((n, 1), dtype=np.float32)
        elif fs.source == "season":
            month = pd.to_datetime(timestamps, unit="s").month.to_numpy()
            codes = ((month % 12) // 3)[:, None]  # 0 winter (Dec-Feb), 1 spring, 2 summer, 3 autumn
            vocab, kind = ["winter", "spring", "summer", "autumn"], "categorical"
            weights = np.ones((n, 1), dtype=np.float32)
        else:
            raise ConfigError(f"feature field '{fs.name}': unknown source '{fs.source}' "
                              f"(expected one of {', '.join(SOURCES)}, col:NAME, multi:NAME)")
        codes = np.asarray(codes, dtype=np.int64)
        ids = np.where(codes >= 0, codes + offset, 0).astype(np.int32)
        weights = np.where(codes >= 0, weights, 0).astype(np.float32)
        width = ids.shape[1]
        fields.append(Field(fs.name, kind, offset, len(vocab), slot, slot + width, list(map(str, vocab))))
        blocks_ids.append(ids)
        blocks_weights.append(weights)
        offset += len(vocab)
        slot += width
    return EncodedDataset(
        name=raw.name,
        layout=FeatureLayout(fields, offset),
        ids=np.ascontiguousarray(np.concatenate(blocks_ids, axis=1)),
        weights=np.ascontiguousarray(np.concatenate(blocks_weights, axis=1)),
        labels=frame["label"].to_numpy(dtype=np.float32),
        users=user_codes,
        items=item_codes,
        timestamps=timestamps,
        user_names=np.asarray(user_vocab, dtype=str),
        dropped=dict(raw.dropped),
    )


def _mean_weights(codes: np.ndarray) -> np.ndarray:
    present = (codes >= 0).astype(np.float32)
    totals = present.sum(axis=1, keepdims=True)
    return np.divide(present, totals, out=np.zeros_like(present), where=totals > 0)


def _column(frame: pd.DataFrame, column: str, field_name: str) -> str:
    if column not in frame.columns:
        raise InputError(f"feature field '{field_name}': column '{column}' is not in the data")
    return column


def _item_keys(frame: pd.DataFrame, item_codes: np.ndarray, item_vocab: list[str]) -> list[object]:
    """Original item ids (not their string form) in code order, to look up item tags."""
    first = np.zeros(len(item_vocab), dtype=np.int64)
    first[item_codes] = np.arange(len(item_codes))  # any row of the item will do
    return list(frame["item"].to_numpy()[first])


def _native(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else value
