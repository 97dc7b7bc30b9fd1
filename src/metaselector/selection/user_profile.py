"""User-level selector inputs: a profile of the user computed from their support rows only.

Per-user algorithm selection finds the user's own meta-features (how many interactions, how
positive, how popular the items they pick) the strongest signal for which model suits whom:
collaborative models for long histories, feature models for short ones. With `[meta]
selector_user_profile = true` the selector sees, besides the sample's features:

  log_events     log(1 + the user's support rows)
  positive_rate  their positive rate, shrunk toward the training rate by SHRINK pseudo-events
  popularity     the mean log(1 + training count) of the items of their support rows

each standardised with the mean and spread over the meta-training users. At test time the
support rows are the user's training rows (or, serving, their history); nothing from the rows
being scored enters. Timestamps and raw ratings are not in the encoded rows, so recency and
rating spread are not among them.

Inside a vmapped or per-user inner step, a user's ids are positions in their own table rows
(user_rows.gather_users); `popularity` is then gathered for those rows like a table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.features import FeatureLayout
from ..errors import InputError
from ..models.mf import ITEM_FIELDS, field_slot

FEATURES = ("log_events", "positive_rate", "popularity")
SHRINK = 5.0


class UserProfile:
    """The profile's constants: item popularity per feature id, the training rate, the scaling."""

    def __init__(self, item_slot: int, popularity: torch.Tensor, global_rate: float,
                 mean: torch.Tensor, std: torch.Tensor) -> None:
        self.item_slot, self.popularity, self.global_rate = item_slot, popularity, global_rate
        self.mean, self.std = mean, std

    @staticmethod
    def item_slot_of(layout: FeatureLayout) -> int:
        """The slot holding the event's item."""
        return field_slot(layout, ITEM_FIELDS, "selector_user_profile")

    @classmethod
    def fit(cls, layout: FeatureLayout, ids: torch.Tensor, labels: torch.Tensor,
            support: Sequence[np.ndarray]) -> UserProfile:
        """From the meta-training users' support rows: popularity counts, the positive rate, and
        the profile's mean and spread over those users."""
        slot = cls.item_slot_of(layout)
        rows = torch.as_tensor(np.concatenate(support) if len(support) else np.empty(0, np.int64))
        counts = torch.bincount(ids[rows, slot].long(), minlength=layout.num_features).double()
        counts[0] = 0  # the unknown item
        popularity = torch.log1p(counts).float()
        rate = float(labels[rows].double().mean()) if len(rows) else 0.5
        raw = cls(slot, popularity, rate, torch.zeros(len(FEATURES)), torch.ones(len(FEATURES)))
        profiles = torch.stack([raw.features(popularity[ids[torch.as_tensor(r), slot].long()],
                                             labels[torch.as_tensor(r)].float()) for r in support])
        raw.mean, raw.std = profiles.mean(0), profiles.std(0).clamp(min=1e-6)
        return raw

    def features(self, row_popularity: torch.Tensor, labels: torch.Tensor,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """The standardised profile [F] of one user from their support rows' item popularity and
        labels (`mask`: 1 for real rows of a padded user). Runs under vmap."""
        mask = torch.ones_like(labels) if mask is None else mask
        n = mask.sum()
        log_events = torch.log1p(n)
        rate = ((labels * mask).sum() + SHRINK * self.global_rate) / (n + SHRINK)
        popularity = (row_popularity * mask).sum() / n.clamp(min=1)
        return (torch.stack([log_events, rate, popularity]) - self.mean) / self.std

    def of_user(self, row_popularity: torch.Tensor, support_ids: torch.Tensor, labels: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """The profile of one user in the inner step, whose `support_ids` are positions in their
        own table rows and `row_popularity` those rows' popularity."""
        return self.features(row_popularity[support_ids[:, self.item_slot]], labels, mask)

    # ---- saving ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"profile/popularity": self.popularity.contiguous(),
                "profile/scaling": torch.stack([self.mean, self.std]).contiguous(),
                "profile/constants": torch.tensor([float(self.item_slot), self.global_rate], dtype=torch.float64)}

    @classmethod
    def empty(cls, layout: FeatureLayout) -> UserProfile:
        """A profile of the layout's shape, to be filled by `load_state_dict`."""
        return cls(cls.item_slot_of(layout), torch.zeros(layout.num_features), 0.5, torch.zeros(len(FEATURES)),
                   torch.ones(len(FEATURES)))

    def load_state_dict(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        shapes = {"profile/popularity": tuple(self.popularity.shape), "profile/scaling": (2, len(FEATURES)),
                  "profile/constants": (2,)}
        for key, shape in shapes.items():
            if key not in tensors:
                raise InputError(f"{where}: tensor '{key}' missing")
            if tuple(tensors[key].shape) != shape:
                raise InputError(f"{where}: tensor '{key}' has shape {tuple(tensors[key].shape)}, expected {shape}")
        self.popularity = tensors["profile/popularity"].float().clone()
        self.mean, self.std = tensors["profile/scaling"].float().clone()
        self.global_rate = float(tensors["profile/constants"][1])

    def to(self, device: torch.device) -> UserProfile:
        self.popularity, self.mean, self.std = (t.to(device) for t in (self.popularity, self.mean, self.std))
        return self
