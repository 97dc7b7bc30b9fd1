"""A dataset encoded for training: every event with the user's earlier events as its history, in
the feature space of a FeatureSpec (data/features.py), by the same FeatureEncoder that encodes
events online (data/encoder.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .encoder import FeatureEncoder, LabelRule
from .features import FeatureLayout, FeatureSpec
from .sources import RawData


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
    encoder: FeatureEncoder | None = field(default=None, repr=False)  # encodes new events the same way
    sources: dict[str, str] = field(default_factory=dict)  # input file name -> SHA-256
    # float32 [N]: the raw rating where the labels come from ratings (the user profile reads it);
    # None where events carry 0/1 labels only
    ratings: np.ndarray | None = None

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



def encode(raw: RawData, spec: FeatureSpec, label_threshold: float | None = 4.0,
           grow_from: FeatureEncoder | None = None) -> EncodedDataset:
    """Encode a parsed dataset into the global feature space of `spec`: every event with the
    user's earlier events as its history, sorted by user, then time, then item. `grow_from`: the
    vocabularies extend that encoder's (see FeatureEncoder.fit)."""
    encoder = FeatureEncoder.fit(raw, spec, LabelRule(label_threshold), grow_from=grow_from)
    frame = raw.interactions
    user_codes = encoder.lookup("@user", frame["user"])
    item_codes = encoder.lookup("@item", frame["item"])
    timestamps = frame["timestamp"].to_numpy(dtype=np.int64)
    order = np.lexsort((item_codes, timestamps, user_codes))
    frame = frame.iloc[order].reset_index(drop=True)
    encoded = encoder.encode(frame)
    return EncodedDataset(
        name=raw.name,
        layout=encoder.layout,
        ids=encoded.ids,
        weights=encoded.weights,
        labels=frame["label"].to_numpy(dtype=np.float32),
        users=user_codes[order],
        items=item_codes[order],
        timestamps=timestamps[order],
        user_names=np.asarray(encoder.vocabularies["@user"], dtype=str),
        dropped=dict(raw.dropped),
        encoder=encoder,
        ratings=_ratings(frame, label_threshold),
    )


def _ratings(frame, label_threshold: float | None) -> np.ndarray | None:
    """The events' ratings, where labels are read from them (a threshold is set)."""
    if label_threshold is None or "rating" not in frame.columns:
        return None
    return rating_array(frame["rating"])


def rating_array(values) -> np.ndarray:
    """Ratings as float32, NaN where one is missing, not a number, or beyond float32's range (such
    an event counts as unrated in the user profile rather than turning it infinite)."""
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    fits = np.isfinite(numbers) & (np.abs(numbers) <= np.finfo(np.float32).max)
    return np.where(fits, numbers, np.nan).astype(np.float32)
