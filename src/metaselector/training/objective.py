"""The terms of a base model's pretraining objective: the label's LogLoss, the L2 on its tables,
and, for a model that regresses ratings too (BaseModel.predicts_ratings), the rating's squared
error. Each returns this process's share of a batch of `global_size` rows, so that summed over
torch.distributed ranks it is the batch's value."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..errors import ConfigError
from ..models.base import BaseModel, gather_rows
from .tensors import TensorData


def embedding_penalty(tables: dict[str, torch.Tensor], ids: torch.Tensor, global_size: int | None = None,
                      skip: tuple[str, ...] = ("linear",)) -> torch.Tensor:
    """Squared norm of the table rows this batch uses (L2 on embeddings, per sample of the
    global batch); the tables named in `skip` (first-order weights) are left out."""
    total = torch.zeros((), device=ids.device)
    for name, table in tables.items():
        if name in skip:
            continue
        total = total + gather_rows(table, ids).pow(2).sum()
    return total / (global_size or ids.shape[0])


def table_penalty(tables: dict[str, torch.Tensor], global_size: int,
                  skip: tuple[str, ...] = ("linear",)) -> torch.Tensor:
    """Squared norm of every row of the tables (weight decay), at the same scale as
    `embedding_penalty` (divided by the batch size); under torch.distributed each rank adds its
    share, so that summed over ranks it is counted once."""
    norms = [table.pow(2).sum() for name, table in tables.items() if name not in skip]
    return torch.stack(norms).sum() / (global_size * distributed.current().world) if norms else torch.zeros(())


def mean_logloss(logits: torch.Tensor, labels: torch.Tensor, global_size: int) -> torch.Tensor:
    """This process's share of the batch's mean LogLoss (the mean itself in one process)."""
    if len(labels) == global_size:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / global_size


def no_ratings(name: str, weight: float) -> ConfigError:
    """The one-line refusal of a model that regresses ratings, on data without them."""
    return ConfigError(f"model {name}: [pretrain] rating_loss = {weight} regresses the events' ratings, but the "
                       "training data has none (0/1 labels only): use MF, or rating_loss = 0")


def has_ratings(ratings: torch.Tensor | np.ndarray | None) -> bool:
    """Whether events' ratings (NaN where an event has none) hold enough to standardise: two."""
    return ratings is not None and int(torch.isfinite(torch.as_tensor(ratings)).sum()) >= 2


def rating_target(model: BaseModel, data: TensorData, train_rows: np.ndarray, weight: float,
                  name: str) -> torch.Tensor | None:
    """What the second loss of a model that regresses ratings reads: every row's rating [N]
    standardised with the training rows' mean and spread (NaN where an event has none); None for
    a model trained on the labels alone (or with `weight` 0). A model that regresses ratings on
    data without any is refused with one line."""
    if not model.predicts_ratings or not weight:
        return None
    rated = data.ratings[torch.as_tensor(train_rows)] if data.ratings is not None else torch.empty(0)
    if not has_ratings(rated):
        raise no_ratings(name, weight)
    rated = rated[torch.isfinite(rated)].double()
    spread = float(rated.std()) or 1.0
    return ((data.ratings.double() - float(rated.mean())) / spread).float()


def rating_error(predicted: torch.Tensor, ratings: torch.Tensor, global_size: int) -> torch.Tensor:
    """This process's share of the batch's mean squared rating error (rows without a rating add 0)."""
    rated = torch.isfinite(ratings)
    error = torch.where(rated, predicted - ratings.nan_to_num(0.0), 0.0)
    return error.pow(2).sum() / global_size
