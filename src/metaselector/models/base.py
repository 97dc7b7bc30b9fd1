"""The interface every base model implements, and the model registry.

A base model maps an encoded batch to logits and changes no state inside `forward`, so
`torch.func.functional_call` can run it with any parameter dict. Its embedding tables
(parameters indexed by feature id, one row per feature) are named in `table_names`:
meta-learning swaps them for small per-user tables and remaps the batch ids, and the model
never notices.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..data.features import FeatureLayout
from ..errors import ConfigError


class Batch(NamedTuple):
    """The one encoded batch format: feature ids and mean-pooling weights per slot."""

    ids: torch.Tensor  # int [N, S], 0 = padding
    weights: torch.Tensor  # float [N, S]


@dataclass
class ModelSettings:
    embedding_dim: int = 10
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    dropout: float = 0.1
    init_std: float = 0.01


class BaseModel(nn.Module):
    """Subclass this, set `table_names`, implement `forward(batch) -> logits [N]`."""

    table_names: tuple[str, ...] = ()

    def __init__(self, layout: FeatureLayout, settings: ModelSettings) -> None:
        super().__init__()
        self.layout = layout
        self.settings = settings
        field_of_slot = torch.as_tensor(layout.field_of_slot())
        # pool[s, f] = 1 if slot s belongs to field f: sums slots into fields in one matmul.
        pool = torch.zeros(layout.num_slots, layout.num_fields)
        pool[torch.arange(layout.num_slots), field_of_slot] = 1.0
        self.register_buffer("field_pool", pool, persistent=False)

    def table(self, num_features: int, width: tuple[int, ...], std: float | None = None) -> nn.Parameter:
        weight = torch.empty(num_features, *width)
        nn.init.normal_(weight, 0.0, self.settings.init_std if std is None else std)
        with torch.no_grad():
            weight[0] = 0.0  # padding row
        return nn.Parameter(weight)

    def forward(self, batch: Batch) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


MODEL_REGISTRY: dict[str, type[BaseModel]] = {}


def register_model(name: str):
    """Class decorator: make a model available by `name` in configurations."""

    def decorate(cls: type[BaseModel]) -> type[BaseModel]:
        MODEL_REGISTRY[name] = cls
        cls.model_name = name
        return cls

    return decorate


def resolve_model(name: str) -> type[BaseModel]:
    """A registered name (LR, FM, FFM, DeepFM), or `package.module:ClassName`."""
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    if ":" in name:
        module_name, _, class_name = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"model '{name}': cannot import ({err})") from None
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            raise ConfigError(f"model '{name}': not a subclass of metaselector.models.BaseModel")
        return cls
    raise ConfigError(f"unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)} or module:Class")


def build_model(name: str, layout: FeatureLayout, settings: ModelSettings) -> BaseModel:
    return resolve_model(name)(layout, settings)


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] for a table of any width, through F.embedding on a 2-D view: its backward
    (and double backward) is markedly faster than advanced indexing's on CPU."""
    flat = F.embedding(ids, table.reshape(table.shape[0], -1))
    return flat.view(*ids.shape, *table.shape[1:])


def weighted_rows(table: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Rows of `table` for every slot, scaled by the slot weights: [N, S, *width]."""
    rows = gather_rows(table, batch.ids)
    scale = batch.weights.reshape(*batch.weights.shape, *([1] * (rows.dim() - 2)))
    return rows * scale


def pool_fields(per_slot: torch.Tensor, field_pool: torch.Tensor) -> torch.Tensor:
    """Sum slot vectors [N, S, d] into their fields: [N, F, d] (one batched matmul)."""
    return torch.matmul(field_pool.t(), per_slot)


def linear_term(linear: torch.Tensor, bias: torch.Tensor, batch: Batch) -> torch.Tensor:
    return (F.embedding(batch.ids, linear).squeeze(-1) * batch.weights).sum(dim=1) + bias


def fm_interaction(embedded: torch.Tensor) -> torch.Tensor:
    """Sum of all pairwise inner products of slot vectors [N, S, k], in O(S k)."""
    square_of_sum = embedded.sum(dim=1).pow(2)
    sum_of_square = embedded.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
