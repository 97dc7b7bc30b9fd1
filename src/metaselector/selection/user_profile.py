"""User-level selector inputs: a profile of the user computed from their support rows only.

Per-user algorithm selection finds the user's own meta-features (how many interactions, how
positive, how they rate, how popular the items they pick, how often they come) the strongest
signal for which model suits whom: collaborative models for long histories, feature models for
short ones. With `[meta] selector_user_profile = true` the selector sees, besides the sample's
features (and feature-weighted stacking always sees):

  log_events     log(1 + the user's support rows)
  positive_rate  their positive rate, shrunk toward the training rate by SHRINK pseudo-events
  popularity     the mean log(1 + training count) of the items of their support rows
  rating_mean    their mean rating, shrunk toward the training mean by SHRINK pseudo-ratings
  rating_spread  the standard deviation of their ratings, its variance shrunk likewise
  log_gap        log(1 + the mean days between consecutive support events), the span over
                 (events - 1) with SHRINK pseudo-gaps of the training mean gap

each standardised with the mean and spread over the meta-training users. Shrinking makes every
feature defined for every user: a user with no rating (label-only events) or a single event gets
the training value. At test time the support rows are the user's training rows (or, serving,
their history); nothing from the rows being scored enters.

The profile is a per-user vector computed from the rows' global ids, labels, ratings and
timestamps (TensorData) before the inner step; inside it the vector is a constant input.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..data.dataset import rating_array
from ..data.features import FeatureLayout
from ..errors import InputError
from ..models.mf import ITEM_FIELDS, field_slot
from ..training.tensors import TensorData

FEATURES = ("log_events", "positive_rate", "popularity", "rating_mean", "rating_spread", "log_gap")
SHRINK = 5.0
DAY = 86400.0
# constants saved with the profile: item slot, then the training statistics the shrinkage pulls toward
CONSTANTS = ("item_slot", "positive_rate", "rating_mean", "rating_variance", "gap_days")


class UserProfile:
    """The profile's constants: item popularity per feature id, the training statistics, the scaling."""

    def __init__(self, item_slot: int, popularity: torch.Tensor, priors: dict[str, float],
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        self.item_slot, self.popularity, self.priors = item_slot, popularity, priors
        self.mean, self.std = mean, std

    @staticmethod
    def item_slot_of(layout: FeatureLayout) -> int:
        """The slot holding the event's item."""
        return field_slot(layout, ITEM_FIELDS, "selector_user_profile")

    @classmethod
    def fit(cls, layout: FeatureLayout, data: TensorData, support: Sequence[np.ndarray]) -> UserProfile:
        """From the meta-training users' support rows: popularity counts, the training statistics,
        and the profile's mean and spread over those users."""
        slot = cls.item_slot_of(layout)
        users = _Segments(support)
        rows = users.rows
        counts = torch.bincount(data.ids[rows, slot].long(), minlength=layout.num_features).double()
        counts[0] = 0  # the unknown item
        ratings = _ratings(data, rows)
        ratings = ratings[torch.isfinite(ratings)]
        span, gaps = users.spans(data)
        priors = {"positive_rate": float(data.labels[rows].double().mean()) if len(rows) else 0.5,
                  "rating_mean": float(ratings.mean()) if len(ratings) else 0.0,
                  "rating_variance": float(ratings.var()) if len(ratings) > 1 else 0.0,
                  "gap_days": float(span.sum() / gaps.sum()) if gaps.sum() > 0 else 0.0}
        raw = cls(slot, torch.log1p(counts).float(), priors, torch.zeros(len(FEATURES)), torch.ones(len(FEATURES)))
        profiles = raw._raw_features(data, users)
        # a feature the same for every user (no ratings in the data, one user) is centred only:
        # dividing by a spread of about 0 would blow rounding noise up into large inputs
        spread = profiles.std(0).nan_to_num(0.0)
        # float32, as saved: a loaded model computes the same profiles to the bit
        raw.mean = profiles.mean(0).float()
        raw.std = torch.where(spread > 1e-6, spread, torch.ones_like(spread)).float()
        return raw

    def raw_features(self, data: TensorData, row_lists: Sequence[np.ndarray]) -> torch.Tensor:
        """The unstandardised profiles [U, F] of users with the support rows `row_lists`: every
        user at once, as sums over each user's rows (a scoring request's users in one pass)."""
        return self._raw_features(data, _Segments(row_lists))

    def _raw_features(self, data: TensorData, users: _Segments) -> torch.Tensor:
        p, n = self.priors, users.sizes
        rate = (users.sum(data.labels[users.rows].double()) + SHRINK * p["positive_rate"]) / (n + SHRINK)
        item_popularity = self.popularity[data.ids[users.rows, self.item_slot].long()].double()
        popularity = users.sum(item_popularity) / n.clamp(min=1)  # 0 for a user with no rows
        ratings = _ratings(data, users.rows)
        rated = torch.isfinite(ratings)
        m = users.sum(rated.double())
        total = users.sum(torch.where(rated, ratings, 0.0))
        rating_mean = (total + SHRINK * p["rating_mean"]) / (m + SHRINK)
        # squared deviations from the user's own mean (two passes: no cancellation of large sums)
        own_mean = (total / m.clamp(min=1))[users.owner]
        squares = users.sum(torch.where(rated, (ratings - own_mean) ** 2, 0.0))
        rating_spread = ((squares + SHRINK * p["rating_variance"]) / ((m - 1).clamp(min=0) + SHRINK)).sqrt()
        span, gaps = users.spans(data)
        gap = (span + SHRINK * p["gap_days"]) / (gaps + SHRINK)
        return torch.stack([torch.log1p(n), rate, popularity, rating_mean, rating_spread, torch.log1p(gap)], dim=1)

    def features(self, data: TensorData, row_lists: Sequence[np.ndarray]) -> torch.Tensor:
        """The standardised profiles [U, F] (float32) of users with the support rows `row_lists`."""
        raw = self.raw_features(data, row_lists)
        return ((raw - self.mean.double().cpu()) / self.std.double().cpu()).float()

    # ---- saving ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        constants = [float(self.item_slot), *(self.priors[k] for k in CONSTANTS[1:])]
        return {"profile/popularity": self.popularity.contiguous(),
                "profile/scaling": torch.stack([self.mean, self.std]).contiguous(),
                "profile/constants": torch.tensor(constants, dtype=torch.float64)}

    @classmethod
    def empty(cls, layout: FeatureLayout) -> UserProfile:
        """A profile of the layout's shape, to be filled by `load_state_dict`."""
        return cls(cls.item_slot_of(layout), torch.zeros(layout.num_features), dict.fromkeys(CONSTANTS[1:], 0.0),
                   torch.zeros(len(FEATURES)), torch.ones(len(FEATURES)))

    def load_state_dict(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        shapes = {"profile/popularity": tuple(self.popularity.shape), "profile/scaling": (2, len(FEATURES)),
                  "profile/constants": (len(CONSTANTS),)}
        for key, shape in shapes.items():
            if key not in tensors:
                raise InputError(f"{where}: tensor '{key}' missing")
            if tuple(tensors[key].shape) != shape:
                raise InputError(f"{where}: tensor '{key}' has shape {tuple(tensors[key].shape)}, expected {shape} "
                                 f"(a profile of {len(FEATURES)} features: {', '.join(FEATURES)})")
        self.popularity = tensors["profile/popularity"].float().clone()
        self.mean, self.std = tensors["profile/scaling"].float().clone()
        constants = tensors["profile/constants"].tolist()
        self.priors = dict(zip(CONSTANTS[1:], constants[1:], strict=True))

    def to(self, device: torch.device) -> UserProfile:
        self.popularity, self.mean, self.std = (t.to(device) for t in (self.popularity, self.mean, self.std))
        return self


def profile_inputs(events: pd.DataFrame, reads_profile: bool,
                   rated: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Raw events' timestamps and ratings as TensorData carries them, for a selector that reads
    the profile (the encoder has checked the timestamps); ratings only where labels are read
    from them (`rated`) and the events have a rating column."""
    if not reads_profile:
        return None, None
    times = torch.as_tensor(pd.to_numeric(events["timestamp"]).to_numpy().astype(np.int64))
    if not rated or "rating" not in events.columns:
        return times, None
    return times, torch.from_numpy(rating_array(events["rating"]))


def _ratings(data: TensorData, rows: torch.Tensor) -> torch.Tensor:
    """The rows' raw ratings (float64, NaN where an event has none or the data has no ratings)."""
    if data.ratings is None:
        return torch.full((len(rows),), float("nan"), dtype=torch.float64)
    return data.ratings[rows].double()


class _Segments:
    """Users' support rows laid end to end: `rows`, the user of each (`owner`), each user's size."""

    def __init__(self, row_lists: Sequence[np.ndarray]) -> None:
        parts = [np.asarray(r, dtype=np.int64) for r in row_lists]
        self.rows = torch.as_tensor(np.concatenate(parts) if parts else np.empty(0, np.int64))
        counts = torch.as_tensor([len(r) for r in parts], dtype=torch.int64)
        self.owner = torch.repeat_interleave(torch.arange(len(parts)), counts)
        self.sizes = counts.double()

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Per user, the sum of `values` (one per row)."""
        return torch.zeros(len(self.sizes), dtype=torch.float64).index_add_(0, self.owner, values)

    def spans(self, data: TensorData) -> tuple[torch.Tensor, torch.Tensor]:
        """Per user, the days between their first and last row and the number of gaps between
        consecutive rows (the gaps' sum is the span): 0 and 0 with one row or no timestamps."""
        gaps = (self.sizes - 1).clamp(min=0)
        if data.timestamps is None:
            return torch.zeros_like(self.sizes), torch.zeros_like(gaps)
        times = data.timestamps[self.rows].double()
        first = torch.full_like(self.sizes, float("inf")).scatter_reduce(0, self.owner, times, "amin")
        last = torch.full_like(self.sizes, float("-inf")).scatter_reduce(0, self.owner, times, "amax")
        return torch.where(gaps > 0, (last - first) / DAY, 0.0), gaps
