"""A user-defined base model: Wide & Deep, written against the project's model interface.

Use it in a configuration file, from any folder:
    models = ["LR", "FM", "FFM", "DeepFM", "path/to/examples/wide_deep.py:WideDeep"]
or, with this folder importable (e.g. run from the repository root), "examples.wide_deep:WideDeep".
"""

import torch
from torch import nn

from metaselector.models import BaseModel, Batch
from metaselector.models.base import linear_term, pool_fields, weighted_rows
from metaselector.models.layers import mlp


class WideDeep(BaseModel):
    table_names = ("linear", "embedding")  # tables indexed by feature id: adapted sparsely per user

    def __init__(self, layout, settings) -> None:
        super().__init__(layout, settings)
        self.linear = self.table(layout.num_features, (1,))
        self.embedding = self.table(layout.num_features, (settings.embedding_dim,))
        self.bias = nn.Parameter(torch.zeros(()))
        self.deep = mlp(layout.num_fields * settings.embedding_dim, settings.hidden, settings.dropout, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        per_field = pool_fields(weighted_rows(self.embedding, batch), self.field_of_slot, self.layout.num_fields)
        return linear_term(self.linear, self.bias, batch) + self.deep(per_field.flatten(1)).squeeze(-1)
