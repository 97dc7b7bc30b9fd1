"""The interface every base model implements, and the model registry.

A base model maps an encoded batch to logits and changes no state inside `forward`, so
`torch.func.functional_call` can run it with any parameter dict. Its embedding tables
(parameters indexed by feature id, one row per feature) are named in `table_names`:
meta-learning swaps them for small per-user tables and remaps the batch ids, and the model
never notices.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ..data.features import FeatureLayout
from ..errors import ConfigError, InputError, MetaSelectorError
from ..settings import AT_LEAST_ONE, POSITIVE, Interval, setting


class Batch(NamedTuple):
    """The one encoded batch format: feature ids and mean-pooling weights per slot."""

    ids: torch.Tensor  # int [N, S], 0 = padding
    weights: torch.Tensor  # float [N, S]


@dataclass
class ModelSettings:
    """What a base model's constructor reads: its sizes and initialisation (a run fills them
    from its configuration, `experiment.context.model_settings`)."""

    embedding_dim: int = setting(10, AT_LEAST_ONE)
    hidden: list[int] = setting([256, 256, 256], AT_LEAST_ONE)
    dropout: float = setting(0.1, Interval(0, 1, hi_open=True))
    init_std: float = setting(0.01, POSITIVE)


@dataclass(frozen=True)
class SearchParam:
    """The range `metaselector tune` searches for one [model_settings.<model>] setting: numbers
    in [low, high] (on a log scale with `log`, whole with `integer`), or one of `choices`."""

    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    choices: tuple = ()


# Searched for every Adam-trained model unless its class declares otherwise.
TRAINING_SPACE = {"l2_embedding": SearchParam(1e-7, 1e-1, log=True), "l2_scope": SearchParam(choices=("rows", "table")),
                  "adam_lr": SearchParam(1e-4, 1e-2, log=True)}


class BaseModel(nn.Module):
    """Subclass this, set `table_names`, implement `forward(batch) -> logits [N]`; declare
    `search_space` (setting -> SearchParam) to have `metaselector tune` search those settings."""

    table_names: tuple[str, ...] = ()
    # Tables of first-order weights (one number per feature): [pretrain] l2_embedding leaves them
    # alone, as the paper's models leave their linear terms unregularised.
    unpenalised_tables: tuple[str, ...] = ("linear",)
    search_space: dict[str, SearchParam] = TRAINING_SPACE
    # A model that also regresses the events' raw ratings in pretraining ([pretrain] rating_loss)
    # sets this, and its forward(batch, with_rating=True) returns (logits, standardised rating).
    predicts_ratings: bool = False

    def __init__(self, layout: FeatureLayout, settings: ModelSettings) -> None:
        super().__init__()
        self.layout = layout
        self.settings = settings
        # Which field each slot belongs to: pool_fields sums slots into fields with it.
        self.register_buffer("field_of_slot", torch.as_tensor(layout.field_of_slot(), dtype=torch.int64),
                             persistent=False)

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


def resolve_model(name: str, where: str = "configuration") -> type[BaseModel]:
    """A registered name (LR, FM, FFM, DeepFM), `package.module:Class` importable from the
    Python path or the current folder, or `path/to/file.py:Class`."""
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    if ":" not in name:
        raise ConfigError(f"{where}: unknown model '{name}': expected one of {', '.join(MODEL_REGISTRY)}, "
                          "module:Class or path/to/file.py:Class")
    target, _, class_name = name.rpartition(":")
    try:
        module = _import_file(Path(target)) if target.endswith(".py") else _import_module(target)
        cls = getattr(module, class_name)
    except (ImportError, AttributeError, OSError, SyntaxError) as err:
        raise ConfigError(f"{where}: model '{name}': cannot import ({err})") from None
    if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
        raise ConfigError(f"{where}: model '{name}': not a subclass of metaselector.models.BaseModel")
    return cls


def _import_module(module_name: str):
    """Import from the Python path, else from the current folder (which an installed console
    script does not put on the path)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not module_name.startswith(err.name):
            raise
        cwd = str(Path.cwd())
        if cwd in sys.path:
            raise
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(cwd)


def _import_file(path: Path):
    if not path.is_file():
        raise ImportError(f"{path}: file not found")
    module_name = f"metaselector_user_model_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def build_model(name: str, layout: FeatureLayout, settings: ModelSettings,
                cls: type[BaseModel] | None = None) -> BaseModel:
    """Base model `name` (of class `cls`, else resolved from the name). An exception raised by the
    constructor of a user's model is reported on one line naming the model."""
    cls = cls or resolve_model(name)
    try:
        return cls(layout, settings)
    except MetaSelectorError:
        raise
    except Exception as err:  # a plug-in's own code can raise anything
        raise InputError(f"model '{name}': its constructor raised {err.__class__.__name__}: {err}") from None


def _batch_first(x: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """`x` with its vmapped dimension first (expanded to `size` where it has none)."""
    return x.movedim(dim, 0) if dim is not None else x.expand(size, *x.shape)


def _flat_ids(ids: torch.Tensor, rows: int) -> torch.Tensor:
    """ids [B, ...] into tables [B, rows, w] as rows of the flattened [B * rows, w] table."""
    offsets = torch.arange(ids.shape[0], device=ids.device) * rows
    return (ids + offsets.view(-1, *([1] * (ids.dim() - 1)))).reshape(-1)


class _GatherRows(torch.autograd.Function):
    """table[ids] on a 2-D table. Backward is one index_add into a zero table: on CPU about
    twice as fast as F.embedding's backward (which sorts the ids first). The backward is
    written with differentiable ops, so second-order MAML and torch.func transforms work.

    Under vmap with a table per user (meta-testing), torch's generated rule turns the
    index_select into an `aten::gather` over an expanded index, a fifth of a batch's time; the
    rule below reads the per-user tables as one flat table instead (one index_select)."""

    @staticmethod
    def forward(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return table.index_select(0, ids.reshape(-1)).view(*ids.shape, table.shape[1])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        table, ids = inputs
        ctx.save_for_backward(ids)
        ctx.rows = table.shape[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (ids,) = ctx.saved_tensors
        return _AddRows.apply(grad, ids, ctx.rows), None

    @staticmethod
    def vmap(info, in_dims, table, ids):
        table_dim, ids_dim = in_dims
        if table_dim is None:  # one table, ids per user: the plain gather already batches
            ids = ids.movedim(ids_dim, 0)
            return _GatherRows.apply(table, ids), 0
        table = table.movedim(table_dim, 0)
        ids = _batch_first(ids, ids_dim, info.batch_size)
        users, rows, width = table.shape
        flat = table.reshape(users * rows, width).index_select(0, _flat_ids(ids, rows))
        return flat.view(*ids.shape, width), 0


class _AddRows(torch.autograd.Function):
    """The gather's backward: `grad` [*ids.shape, w] summed into a zero table [rows, w] at
    `ids`; its own backward is the gather again (second-order MAML). Under vmap, one
    index_add into the flattened per-user tables rather than a batched scatter."""

    @staticmethod
    def forward(grad: torch.Tensor, ids: torch.Tensor, rows: int) -> torch.Tensor:
        flat = grad.reshape(-1, grad.shape[-1])
        return flat.new_zeros(rows, flat.shape[1]).index_add(0, ids.reshape(-1), flat)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, ids, _ = inputs
        ctx.save_for_backward(ids)

    @staticmethod
    def backward(ctx, grad_table: torch.Tensor):
        (ids,) = ctx.saved_tensors
        return _GatherRows.apply(grad_table, ids), None, None

    @staticmethod
    def vmap(info, in_dims, grad, ids, rows):
        grad_dim, ids_dim, _ = in_dims
        users = info.batch_size
        grad = _batch_first(grad, grad_dim, users)
        ids = _batch_first(ids, ids_dim, users)
        flat = grad.reshape(-1, grad.shape[-1])
        out = flat.new_zeros(users * rows, flat.shape[1]).index_add(0, _flat_ids(ids, rows), flat)
        return out.view(users, rows, flat.shape[1]), 0


def gather_rows(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """table[ids] for a table of any width: [*ids.shape, *table.shape[1:]]."""
    flat = _GatherRows.apply(table.reshape(table.shape[0], -1), ids)
    return flat.view(*ids.shape, *table.shape[1:])


def weighted_rows(table: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Rows of `table` for every slot, scaled by the slot weights: [N, S, *width]."""
    rows = gather_rows(table, batch.ids)
    scale = batch.weights.reshape(*batch.weights.shape, *([1] * (rows.dim() - 2)))
    return rows * scale


def pool_fields(per_slot: torch.Tensor, field_of_slot: torch.Tensor, num_fields: int) -> torch.Tensor:
    """Sum slot vectors [N, S, ...] into their fields: [N, F, ...]. One index_add over the slot
    axis: about twice as fast as a [F, S] pooling matmul, whose batch of tiny products is slow."""
    out = per_slot.new_zeros(per_slot.shape[0], num_fields, *per_slot.shape[2:])
    return out.index_add(1, field_of_slot, per_slot)


def linear_term(linear: torch.Tensor, bias: torch.Tensor, batch: Batch) -> torch.Tensor:
    return (gather_rows(linear, batch.ids).squeeze(-1) * batch.weights).sum(dim=1) + bias


def fm_interaction(embedded: torch.Tensor) -> torch.Tensor:
    """Sum of all pairwise inner products of slot vectors [N, S, k], in O(S k)."""
    square_of_sum = embedded.sum(dim=1).pow(2)
    sum_of_square = embedded.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
