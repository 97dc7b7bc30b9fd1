"""Collaborative matrix factorisation: a global bias, user and item biases, and the dot product of
user and item vectors (beyond the paper: a model family unlike the four feature-interaction
models, so that selecting per user has something different to choose)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .base import TRAINING_SPACE, BaseModel, Batch, SearchParam, gather_rows, register_model

USER_FIELDS = ("user_id",)
ITEM_FIELDS = ("movie_id", "item_id")


def field_slot(layout, names: tuple[str, ...], model: str) -> int:
    """The (first) slot of the first field named in `names`."""
    for f in layout.fields:
        if f.name in names:
            return f.slot_start
    raise ConfigError(f"model {model}: the data has none of the fields {', '.join(names)}")


@register_model("MF")
class MF(BaseModel):
    table_names = ("bias_table", "embedding")
    # The user and item biases are first-order weights: shrinking them towards zero with the
    # vectors' L2 cost 0.009 of validation LogLoss (0.5619 against 0.5531, seed 0, extended preset).
    unpenalised_tables = ("bias_table",)
    search_space = {"embedding_dim": SearchParam(4, 64, log=True, integer=True),
                    "l2_embedding": SearchParam(1e-7, 1.0, log=True),
                    "l2_scope": TRAINING_SPACE["l2_scope"],
                    "adam_lr": SearchParam(1e-4, 3e-2, log=True)}

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        self.user_slot = field_slot(layout, USER_FIELDS, self.model_name)
        self.item_slot = field_slot(layout, ITEM_FIELDS, self.model_name)
        self.bias_table = self.table(layout.num_features, (1,))
        self.embedding = self.table(layout.num_features, (settings.embedding_dim,), std=0.1)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch) -> torch.Tensor:
        pair = batch.ids[:, [self.user_slot, self.item_slot]]  # [N, 2]
        vectors = gather_rows(self.embedding, pair)  # [N, 2, k]
        biases = gather_rows(self.bias_table, pair).squeeze(-1).sum(dim=1)
        return self.bias + biases + (vectors[:, 0] * vectors[:, 1]).sum(dim=-1)


@register_model("RatingMF")
class RatingMF(MF):
    """MF trained on the events' ratings as well as their labels (beyond the paper). MF's score
    predicts the standardised rating; the label's logit is that score times a learned scale plus
    a learned shift. Pretraining adds [pretrain] rating_loss times the rating's squared error to
    the label's LogLoss.

    Where labels are thresholded ratings, every label-trained model sees a 5 and a 4 as the same
    positive and a 3 and a 1 as the same negative; this one sees how far above or below the
    threshold a user rates. On ml-latest-small's validation rows it adds more to a blend of the
    other models than a second label-trained MF would (docs/findings.md). It needs ratings in
    the data; it scores, adapts and serves as MF does."""

    search_space = {**MF.search_space, "rating_loss": SearchParam(0.1, 30.0, log=True)}
    predicts_ratings = True

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        # Vectors start at init_std (0.01), not MF's 0.1: the rating's squared error fits the
        # starting noise fast (0.7629 against 0.7771 AUC on the meta-training users' query rows, seed 0).
        self.embedding = self.table(layout.num_features, (settings.embedding_dim,))
        self.label_scale = nn.Parameter(torch.tensor(1.0))
        self.label_shift = nn.Parameter(torch.zeros(()))

    def forward(self, batch: Batch, with_rating: bool = False):
        """The label's logits [N]; with `with_rating`, (logits, the standardised rating [N])."""
        rating = super().forward(batch)
        logits = self.label_scale * rating + self.label_shift
        return (logits, rating) if with_rating else logits
