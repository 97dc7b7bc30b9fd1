"""An EncodedDataset as torch tensors, and batching of row subsets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.dataset import EncodedDataset
from ..models.base import Batch


@dataclass
class TensorData:
    ids: torch.Tensor  # int32 [N, S]
    weights: torch.Tensor  # float32 [N, S]
    labels: torch.Tensor  # float32 [N]
    users: torch.Tensor  # int64 [N]
    # Raw per-event values never read by a model's forward: Unix seconds (the user profile,
    # selection/user_profile.py), and the rating (NaN where an event has only a 0/1 label; the
    # profile, and the rating loss of a model that regresses ratings in pretraining).
    timestamps: torch.Tensor | None = None  # int64 [N]
    ratings: torch.Tensor | None = None  # float32 [N]

    @classmethod
    def from_encoded(cls, data: EncodedDataset) -> TensorData:
        return cls(torch.from_numpy(data.ids), torch.from_numpy(data.weights),
                   torch.from_numpy(data.labels), torch.from_numpy(data.users),
                   torch.from_numpy(data.timestamps),
                   None if data.ratings is None else torch.from_numpy(data.ratings))

    def batch(self, rows: torch.Tensor | np.ndarray, device: torch.device | str = "cpu") -> tuple[Batch, torch.Tensor]:
        rows = torch.as_tensor(rows)
        return (Batch(self.ids[rows].to(device, torch.int64), self.weights[rows].to(device)),
                self.labels[rows].to(device))


@torch.no_grad()
def predict(model: torch.nn.Module, data: TensorData, rows: np.ndarray, batch_size: int = 20000,
            device: torch.device | str = "cpu") -> np.ndarray:
    """Predicted probabilities for `rows`, in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(rows), batch_size):
        batch, _ = data.batch(rows[start:start + batch_size], device)
        out.append(torch.sigmoid(model(batch)).double().cpu())
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.empty(0)
