"""Several users' rows stacked into padded tensors, for adapting users in one vmapped call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..training.tensors import TensorData


@dataclass
class PaddedRows:
    ids: torch.Tensor  # [U, n, S], padding rows all 0
    weights: torch.Tensor  # [U, n, S], padding rows all 0
    labels: torch.Tensor  # [U, n]
    mask: torch.Tensor  # [U, n]: 1 for real rows
    user_ids: list[torch.Tensor]  # each user's real ids, unpadded


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
    return PaddedRows(ids, weights, padded_labels, mask, user_ids)
