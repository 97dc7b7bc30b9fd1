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


def custom_feature_spec(categorical: list[str], multi_hot: list[str], history_length: int = 10,
                        separator: str = "|") -> FeatureSpec:
    fields = [FieldSpec("user_id", "user"), FieldSpec("item_id", "item")]
    fields += [FieldSpec(c, f"col:{c}") for c in categorical]
    fields += [FieldSpec(c, f"multi:{c}") for c in multi_hot]
    fields += [FieldSpec("user_history_item", "history_items"), FieldSpec("day_of_week", "dow"),
               FieldSpec("season", "season")]
    return FeatureSpec(tuple(fields), history_length=history_length, multi_separator=separator)


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
