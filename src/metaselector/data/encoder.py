"""FeatureEncoder: raw events to the encoded batch format, offline and online by one code path.

`FeatureEncoder.fit` reads the vocabularies and side tables off a parsed dataset; `encode`
turns any events into ids and weights. Offline, a dataset's events are encoded with their own
history (`encode(events)`); online, a user's candidates are encoded against the history the
request brings (`encode(candidates, history=events)`). Both run the same function, so a row
encodes to the same ids whichever way it comes in. Unknown users, items and values map to id
0 (padding/unknown) and are counted, never an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ..errors import ConfigError, InputError
from .features import SOURCES, FeatureLayout, FeatureSpec, Field, FieldSpec, bag
from .history import as_keys, group_codes, history_positions
from .sources import RawData

# Values treated as missing side information (padding id 0), as pandas writes them as strings.
MISSING = ("nan", "None", "", "<NA>", "NaT")


@dataclass
class LabelRule:
    """How an event's label is read: a 0/1 `label` column, or `rating >= threshold`."""

    threshold: float | None = 4.0  # None: events carry a 0/1 `label`

    def labels(self, events: pd.DataFrame) -> np.ndarray:
        if "label" in events.columns:
            return pd.to_numeric(events["label"], errors="coerce").to_numpy(dtype=np.float32)
        if self.threshold is not None and "rating" in events.columns:
            rating = pd.to_numeric(events["rating"], errors="coerce").to_numpy(dtype=np.float64)
            return (rating >= self.threshold).astype(np.float32)
        return np.full(len(events), np.nan, dtype=np.float32)


@dataclass
class EncodedEvents:
    """Encoded rows in the order of the events given; `unknown` counts ids that fell to 0."""

    ids: np.ndarray  # int32 [N, S]
    weights: np.ndarray  # float32 [N, S]
    labels: np.ndarray  # float32 [N] (NaN where an event has no label)
    unknown: dict[str, int] = field(default_factory=dict)


def _vocabulary(values: pd.Series | np.ndarray) -> list[str]:
    uniques = pd.unique(as_keys(values))
    return sorted(str(u) for u in uniques if str(u) not in MISSING)


class _Lookup:
    """A vocabulary's string -> code map (-1 for unknown or missing)."""

    def __init__(self, vocabulary: list[str]) -> None:
        self.index = pd.Index(vocabulary)

    def __call__(self, values: pd.Series | np.ndarray) -> np.ndarray:
        return np.asarray(self.index.get_indexer(as_keys(values)), dtype=np.int64)


class FeatureEncoder:
    """Vocabularies, item tags and per-user side columns of one dataset, and the encoding."""

    def __init__(self, spec: FeatureSpec, vocabularies: dict[str, list[str]], item_tags: np.ndarray,
                 user_columns: dict[str, dict[str, str]], label_rule: LabelRule) -> None:
        self.spec = spec
        self.vocabularies = vocabularies  # field name -> sorted values; also "@user", "@item", "@tag"
        self.item_tags = item_tags  # int64 [n_items, T]: tag codes per item code, -1 = none
        self.user_columns = user_columns  # side column -> {user: value}, for columns fixed per user
        self.label_rule = label_rule
        self._lookups = {name: _Lookup(v) for name, v in vocabularies.items()}
        self.layout = self._layout()

    # ---- fitting -------------------------------------------------------------------
    @classmethod
    def fit(cls, raw: RawData, spec: FeatureSpec, label_rule: LabelRule | None = None,
            grow_from: FeatureEncoder | None = None) -> FeatureEncoder:
        """Vocabularies and side tables of `raw`. `grow_from` (continuing a saved model on new
        data): every vocabulary is the union of that encoder's and the new data's, old items keep
        their tags where the new data does not list them, so every old feature keeps a row."""
        frame = raw.interactions
        if len(frame) == 0:
            raise InputError(f"{raw.files[0] if raw.files else raw.name}: no interactions")
        old = grow_from.vocabularies if grow_from is not None else {}

        def grown(name: str, values: list[str]) -> list[str]:
            return sorted(set(values) | set(old.get(name, []))) if old else values

        vocabularies = {"@user": grown("@user", _vocabulary(frame["user"])),
                        "@item": grown("@item", _vocabulary(frame["item"]))}
        tags_by_key = {**(grow_from.tags_by_item() if grow_from is not None else {}),
                       **{str(key): tags for key, tags in raw.item_tags.items()}}
        tag_lists = [tags_by_key.get(key, []) for key in vocabularies["@item"]]
        vocabularies["@tag"] = grown("@tag", sorted({t for tags in tag_lists for t in tags}))
        tag_index = {t: i for i, t in enumerate(vocabularies["@tag"])}
        tag_rows = np.repeat(np.arange(len(tag_lists)), [len(t) for t in tag_lists])
        tag_codes = np.array([tag_index[t] for tags in tag_lists for t in tags], dtype=np.int64)
        item_tags, _ = bag(tag_rows, tag_codes, len(tag_lists), spec.max_tags)
        user_columns: dict[str, dict[str, str]] = {}
        for fs in spec.fields:
            kind, _, column = fs.source.partition(":")
            if kind not in ("col", "multi"):
                if fs.source not in SOURCES:
                    raise ConfigError(f"feature field '{fs.name}': unknown source '{fs.source}' "
                                      f"(expected one of {', '.join(SOURCES)}, col:NAME, multi:NAME)")
                continue
            if column not in frame.columns:
                raise InputError(f"feature field '{fs.name}': column '{column}' is not in the data")
            values = frame[column].astype(str)
            if kind == "multi":
                exploded = values.str.split(spec.multi_separator).explode()
                vocabularies[fs.name] = grown(fs.name, _vocabulary(exploded[exploded.str.len() > 0]))
            else:
                vocabularies[fs.name] = grown(fs.name, _vocabulary(values))
            # A column with one value per user (demographics) is kept per user, so online requests
            # need not repeat it; a column that varies per event must come with each event.
            per_user = pd.DataFrame({"user": as_keys(frame["user"]), "value": values}).drop_duplicates()
            if not per_user["user"].duplicated().any():
                earlier = grow_from.user_columns.get(column, {}) if grow_from is not None else {}
                user_columns[column] = {**earlier, **dict(zip(per_user["user"], per_user["value"], strict=True))}
        return cls(spec, vocabularies, item_tags, user_columns, label_rule or LabelRule())

    def tags_by_item(self) -> dict[str, list[str]]:
        """Each known item's tags, by raw item id."""
        tags = self.vocabularies["@tag"]
        return {item: [tags[c] for c in row if c >= 0]
                for item, row in zip(self.vocabularies["@item"], self.item_tags, strict=True)}

    def id_map_to(self, grown: FeatureEncoder) -> np.ndarray:
        """The id in `grown` (an encoder grown from this one) of every feature id here [num_features];
        id 0 (padding and unknown) stays 0."""
        out = np.zeros(self.layout.num_features, dtype=np.int64)
        for mine, theirs in zip(self.layout.fields, grown.layout.fields, strict=True):
            codes = pd.Index(theirs.vocabulary).get_indexer(mine.vocabulary)
            if (codes < 0).any():
                raise InputError(f"field '{mine.name}': value {mine.vocabulary[int(np.flatnonzero(codes < 0)[0])]!r} "
                                 "is missing from the grown vocabulary")
            out[mine.offset:mine.offset + mine.size] = theirs.offset + codes
        return out

    def _layout(self) -> FeatureLayout:
        """Fields with their id blocks and slot ranges (slot widths are fixed by the spec)."""
        fields, offset, slot = [], 1, 0
        for fs in self.spec.fields:
            vocabulary, kind, width = self._field_shape(fs)
            fields.append(Field(fs.name, kind, offset, len(vocabulary), slot, slot + width, list(vocabulary)))
            offset += len(vocabulary)
            slot += width
        return FeatureLayout(fields, offset)

    def _field_shape(self, fs: FieldSpec) -> tuple[list[str], str, int]:
        """(vocabulary, kind, slots) of a field. Slot counts depend only on the spec and the
        vocabularies, so every encoding of every event has the same layout."""
        spec, v = self.spec, self.vocabularies
        fixed = {
            "user": (v["@user"], "categorical", 1),
            "item": (v["@item"], "categorical", 1),
            "item_tags": (v["@tag"], "multi-hot", self.item_tags.shape[1]),
            "history_items": (v["@item"], "multi-hot", spec.history_length),
            # a bag holds each tag once, so it is never wider than the tag vocabulary
            "history_tags": (v["@tag"], "multi-hot", max(1, min(spec.max_history_tags, len(v["@tag"])))),
            "dow": (["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"], "categorical", 1),
            "season": (["winter", "spring", "summer", "autumn"], "categorical", 1),
        }
        if fs.source in fixed:
            return fixed[fs.source]
        if fs.source.startswith("multi:"):
            return v[fs.name], "multi-hot", max(1, min(spec.max_tags, len(v[fs.name])))
        return v[fs.name], "categorical", 1

    # ---- encoding ------------------------------------------------------------------
    def lookup(self, vocabulary: str, values: pd.Series | np.ndarray) -> np.ndarray:
        """Codes of raw values in a vocabulary ("@user", "@item", "@tag" or a side field); -1 = unknown."""
        return self._lookups[vocabulary](values)

    def encode(self, events: pd.DataFrame, history: pd.DataFrame | None = None,
               groups: np.ndarray | None = None) -> EncodedEvents:
        """Encode `events` (columns user, item, timestamp, and rating or label where known, plus
        side columns that vary per event). Each event's history features come from `history`
        (default: `events` themselves): the same user's events strictly before its timestamp.
        `groups` (with no `history`): one key per event that says whose history it belongs to,
        in place of the user column (separate requests of one user stay apart)."""
        history = events if history is None else history
        n = len(events)
        for frame, what in ((events, "events"), (history, "history")):
            missing = [c for c in ("user", "item", "timestamp") if c not in frame.columns]
            if missing:
                raise InputError(f"{what}: missing column(s) {', '.join(missing)}")
        if groups is not None and history is events:
            codes = pd.factorize(pd.Series(groups))[0].astype(np.int64)
            users = (codes, codes)
        else:
            users = group_codes(events["user"], history["user"])
        times = _timestamps(events["timestamp"], "timestamp")
        h_times = times if history is events else _timestamps(history["timestamp"], "history timestamp")
        item = self._lookups["@item"](events["item"])
        h_item = item if history is events else self._lookups["@item"](history["item"])
        unknown = {"users": int((self._lookups["@user"](events["user"]) < 0).sum()),
                   "items": int((item < 0).sum())}
        hist_pos, hist_valid = history_positions(users, times, h_times, h_item, self.spec.history_length)
        blocks_ids, blocks_weights = [], []
        for f, fs in zip(self.layout.fields, self.spec.fields, strict=True):
            codes, weights = self._field_codes(fs, f, events, times, item, h_item, hist_pos, hist_valid)
            width = f.slot_stop - f.slot_start
            if codes.shape[1] < width:  # bags come out as wide as their fullest row
                pad = width - codes.shape[1]
                codes = np.pad(codes, ((0, 0), (0, pad)), constant_values=-1)
                weights = np.pad(weights, ((0, 0), (0, pad)))
            blocks_ids.append(np.where(codes >= 0, codes + f.offset, 0).astype(np.int32))
            blocks_weights.append(np.where(codes >= 0, weights, 0).astype(np.float32))
        ids = np.concatenate(blocks_ids, axis=1) if n else np.zeros((0, self.layout.num_slots), np.int32)
        weights = np.concatenate(blocks_weights, axis=1) if n else np.zeros((0, self.layout.num_slots), np.float32)
        return EncodedEvents(np.ascontiguousarray(ids), np.ascontiguousarray(weights),
                             self.label_rule.labels(events), unknown)

    def _field_codes(self, fs, f, events, times, item, h_item, hist_pos, hist_valid):
        n = len(events)
        ones = np.ones((n, 1), dtype=np.float32)
        if fs.source == "user":
            return self._lookups["@user"](events["user"])[:, None], ones
        if fs.source == "item":
            return item[:, None], ones
        if fs.source == "item_tags":
            codes = self._tags_of(item)
            return codes, _mean_weights(codes)
        if fs.source == "history_items":
            codes = np.where(hist_valid, h_item[hist_pos] if len(h_item) else -1, -1)
            return codes, _mean_weights(codes)
        if fs.source == "history_tags":
            per_row = self._tags_of(h_item[hist_pos] if len(h_item) else np.full_like(hist_pos, -1))
            per_row[~hist_valid] = -1
            flat = per_row.reshape(n, -1)
            rows, cols = np.nonzero(flat >= 0)
            return bag(rows, flat[rows, cols], n, self.spec.max_history_tags)
        if fs.source == "dow":
            return ((times // 86400 + 3) % 7)[:, None], ones  # 1970-01-01 was a Thursday; Monday = 0
        if fs.source == "season":
            month = pd.to_datetime(times, unit="s").month.to_numpy()
            return ((month % 12) // 3)[:, None].astype(np.int64), ones  # 0 winter (Dec-Feb) .. 3 autumn
        column = fs.source.partition(":")[2]
        values = self._side_column(events, column, fs.name)
        if fs.source.startswith("multi:"):
            exploded = values.reset_index(drop=True).str.split(self.spec.multi_separator).explode()
            exploded = exploded[exploded.str.len() > 0]
            codes = self._lookups[fs.name](exploded)
            keep = codes >= 0
            return bag(exploded.index.to_numpy()[keep], codes[keep], n, self.spec.max_tags)
        codes = self._lookups[fs.name](values)[:, None]
        return codes, (codes >= 0).astype(np.float32)

    def _side_column(self, events: pd.DataFrame, column: str, field_name: str) -> pd.Series:
        if column in events.columns:
            return events[column].astype(str)
        if column in self.user_columns:
            return as_keys(events["user"]).map(self.user_columns[column]).astype(str)
        raise InputError(f"feature field '{field_name}': column '{column}' is missing from the events")

    def _tags_of(self, item_codes: np.ndarray) -> np.ndarray:
        """Tag codes [.., T] of items (unknown items: none)."""
        tags = self.item_tags[np.maximum(item_codes, 0)]
        tags[item_codes < 0] = -1
        return tags

    # ---- saving --------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"spec": asdict(self.spec), "vocabularies": self.vocabularies,
                "item_tags": self.item_tags.tolist(), "user_columns": self.user_columns,
                "label_threshold": self.label_rule.threshold}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureEncoder:
        spec_data = dict(data["spec"])
        spec = FeatureSpec(**{**spec_data, "fields": tuple(FieldSpec(**f) for f in spec_data["fields"])})
        item_tags = np.asarray(data["item_tags"], dtype=np.int64).reshape(len(data["item_tags"]), -1)
        return cls(spec, data["vocabularies"], item_tags, data["user_columns"], LabelRule(data["label_threshold"]))


def _mean_weights(codes: np.ndarray) -> np.ndarray:
    present = (codes >= 0).astype(np.float32)
    totals = present.sum(axis=1, keepdims=True)
    return np.divide(present, totals, out=np.zeros_like(present), where=totals > 0)


def _timestamps(values: pd.Series, name: str) -> np.ndarray:
    numeric = pd.to_numeric(values, errors="coerce")
    bad = ~np.isfinite(numeric.to_numpy(dtype=np.float64, na_value=np.nan))
    if bad.any():
        raise InputError(f"field '{name}': row {int(np.flatnonzero(bad)[0]) + 1}: expected Unix seconds, "
                         f"got {values.iloc[int(np.flatnonzero(bad)[0])]!r}")
    return numeric.to_numpy().astype(np.int64)
