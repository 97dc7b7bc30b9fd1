"""The base models of a run: pretrained on the support rows, then continued on all training rows.

Both sets hold out one validation slice of the support rows, shared by every model, for early
stopping; no base model ever trains on it. The continued models ("singles") are the
single-model rows of Table 3 and the models every selector is applied to at test time; they
share the support models' parameter basis, so meta-training's change to theta carries over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.features import FeatureLayout
from ..models import BaseModel, ModelSettings, build_model
from ..random_streams import generator, int_seed
from .pretrain import PretrainSettings, pretrain
from .state import StateFile
from .tensors import TensorData


@dataclass
class BaseModels:
    support: dict[str, BaseModel]  # trained on the support rows: what meta-training starts from
    singles: dict[str, BaseModel]  # the same models continued on all training rows


def holdout_rows(support: np.ndarray, fraction: float, seed: int, among: np.ndarray | None = None) -> np.ndarray:
    """The base models' validation slice: one random `fraction` of the support rows, shared by
    every model, so no base model (support-trained or continued) ever trains on it. `among`:
    drawn from those rows only (as many as there are, up to the fraction): a continued model's
    parent trained on the other rows, so they would flatter it."""
    size = max(1, int(round(len(support) * fraction)))
    pool = support if among is None else np.intersect1d(support, among)
    shuffled = generator(seed, "holdout").permutation(pool)
    return np.sort(shuffled[:size])


def new_model(name: str, index: int, layout: FeatureLayout, settings: ModelSettings, seed: int,
              classes: dict[str, type[BaseModel]] | None = None) -> BaseModel:
    """Model `index` of a run, initialised from its own stream."""
    torch.manual_seed(int_seed(seed, "model-init", index))
    return build_model(name, layout, settings, (classes or {}).get(name))


def pretrain_models(names: list[str], layout: FeatureLayout, model_settings: dict[str, ModelSettings],
                    settings: dict[str, PretrainSettings], tensors: TensorData, rows: np.ndarray, holdout: np.ndarray,
                    seed: int, device: torch.device, progress: bool, tag: str,
                    start: tuple[dict, dict] | None = None,
                    classes: dict[str, type[BaseModel]] | None = None,
                    state_dir: Path | None = None, parent=None) -> tuple[dict, dict]:
    """Pretrain every base model on `rows` with its own settings (`model_settings`, `settings`:
    name -> settings), early-stopping on `holdout`; with `start` (earlier models and their
    results), continue those models instead, with their optimizer state. `parent` (a
    continuation.ParentModel): models start from a saved model's weights (kept if no epoch
    improves on them)."""
    models, results = {}, {}
    for index, name in enumerate(names):
        model = new_model(name, index, layout, model_settings[name], seed, classes).to(device)
        extra: dict = {"valid_rows": holdout}
        if start is not None:
            model.load_state_dict(start[0][name].state_dict())
            extra["optimizer_state"] = start[1][name].optimizer_state
        elif parent is not None:
            parent.start_model(name, model)
            extra["warm_start"] = True
        # Each model's support run and its continuation draw batch orders from streams of their own.
        order = int_seed(seed, "batch-order", index, 0 if start is None else 1)
        results[name] = pretrain(model, tensors, rows, settings[name], seed=order, device=device,
                                 progress=progress, desc=f"{name} ({tag})",
                                 state=StateFile.named(state_dir, f"pretrain-{tag}-{index}-{name}"), **extra)
        models[name] = model
    return models, results


def train_base_models(names: list[str], layout: FeatureLayout, model_settings: dict[str, ModelSettings],
                      settings: dict[str, PretrainSettings], tensors: TensorData, support: np.ndarray,
                      train: np.ndarray,
                      holdout: np.ndarray, seed: int, device: torch.device, progress: bool, on_support: bool,
                      stage: Callable[[str], object],
                      classes: dict[str, type[BaseModel]] | None = None, state_dir: Path | None = None,
                      parent=None) -> BaseModels:
    """Support models, then singles continued from them (`on_support`); or, without it, one set
    pretrained on all training rows serving as both. `parent`: the first set starts from a saved
    model's weights (see pretrain_models)."""
    common = dict(names=names, layout=layout, model_settings=model_settings, settings=settings,
                  tensors=tensors, holdout=holdout, seed=seed, device=device, progress=progress, classes=classes,
                  state_dir=state_dir, parent=parent)
    if not on_support:
        with stage("pretrain base models (all training rows)"):
            models, _ = pretrain_models(rows=train, tag="train", **common)
        return BaseModels(models, models)
    with stage("pretrain base models (support rows)"):
        support_models, support_runs = pretrain_models(rows=support, tag="support", **common)
    with stage("continue base models on all training rows"):
        singles, single_runs = pretrain_models(rows=train, tag="train", start=(support_models, support_runs),
                                               **common)
    return BaseModels(support_models, singles)
