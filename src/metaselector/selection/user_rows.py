"""One way of gathering users' rows for the inner step, used by meta-training and meta-testing.

For a group of users: each user's support and evaluation rows stacked and padded to the
group's longest, the sorted feature ids the user touches (the table rows they adapt, padded
with an id past the vocabulary, never looked up), and every id remapped to its position in
those rows, so that each user adapts a small table of their own rows. Meta-testing adapts the
padded group in one vmapped call; meta-training takes one user at a time, unpadded (`user`),
so that one user's second-order graph is alive at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..models.base import Batch
from ..training.tensors import TensorData


@dataclass
class PaddedRows:
    ids: torch.Tensor  # [U, n, S], padding rows all 0
    weights: torch.Tensor  # [U, n, S], padding rows all 0
    labels: torch.Tensor  # [U, n]
    mask: torch.Tensor  # [U, n]: 1 for real rows
    user_ids: list[torch.Tensor]  # each user's real ids, unpadded
    lengths: list[int]  # each user's real rows


def padded_rows(data: TensorData, row_lists: Sequence[np.ndarray], device: torch.device) -> PaddedRows:
    """Rows of several users stacked into [U, longest, ...] tensors, zero-padded."""
    lengths = np.array([len(r) for r in row_lists])
    longest = max(1, int(lengths.max(initial=0)))
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in row_lists]) if lengths.sum() else \
        np.empty(0, dtype=np.int64)
    user = np.repeat(np.arange(len(row_lists)), lengths)
    slot = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    batch, labels = data.batch(flat, device)
    shape = (len(row_lists), longest)
    ids = torch.zeros(*shape, batch.ids.shape[1], dtype=torch.int64, device=device)
    weights = torch.zeros(*shape, batch.ids.shape[1], dtype=batch.weights.dtype, device=device)
    padded_labels = torch.zeros(shape, dtype=labels.dtype, device=device)
    mask = torch.zeros(shape, dtype=labels.dtype, device=device)
    where = (torch.as_tensor(user, device=device), torch.as_tensor(slot, device=device))
    ids[where], weights[where], padded_labels[where], mask[where] = batch.ids, batch.weights, labels, 1.0
    user_ids = list(torch.split(batch.ids, lengths.tolist()))
    return PaddedRows(ids, weights, padded_labels, mask, user_ids, lengths.tolist())


@dataclass
class UserRows:
    """A group of users gathered for the inner step (see the module docstring)."""

    rows: torch.Tensor  # [U, W]: each user's sorted feature ids, padded with the vocabulary size
    widths: list[int]  # each user's real table rows
    support: PaddedRows  # ids remapped to positions in the user's `rows`
    evaluation: PaddedRows  # likewise

    def lookup(self, vocabulary: int) -> torch.Tensor:
        """`rows` with the padding clamped into the table (those positions are never used)."""
        return self.rows.clamp(max=vocabulary - 1)

    def user(self, k: int) -> tuple[torch.Tensor, Batch, torch.Tensor, Batch, torch.Tensor]:
        """User k unpadded: (their table rows, support batch, support labels, evaluation batch,
        evaluation labels), the batches' ids positions in those rows."""
        s, e = self.support, self.evaluation
        n_s, n_e = s.lengths[k], e.lengths[k]
        return (self.rows[k, :self.widths[k]], Batch(s.ids[k, :n_s], s.weights[k, :n_s]), s.labels[k, :n_s],
                Batch(e.ids[k, :n_e], e.weights[k, :n_e]), e.labels[k, :n_e])


def gather_users(data: TensorData, support: Sequence[np.ndarray], evaluation: Sequence[np.ndarray],
                 vocabulary: int, device: torch.device) -> UserRows:
    """Users' support and evaluation rows, padded, with each user's own table rows."""
    s = padded_rows(data, support, device)
    e = padded_rows(data, evaluation, device)
    per_user = [torch.unique(torch.cat([a.flatten(), b.flatten()])) for a, b in zip(s.user_ids, e.user_ids,
                                                                                    strict=True)]
    width = max([1, *(len(u) for u in per_user)])
    rows = torch.full((len(per_user), width), vocabulary, dtype=torch.int64, device=device)
    for k, u in enumerate(per_user):
        rows[k, :len(u)] = u
    s.ids = torch.searchsorted(rows, s.ids.flatten(1)).view_as(s.ids)
    e.ids = torch.searchsorted(rows, e.ids.flatten(1)).view_as(e.ids)
    return UserRows(rows, [len(u) for u in per_user], s, e)
