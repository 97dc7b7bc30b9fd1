"""Meta-training on a seed's context, stopped on the test-time setup over held-out rows.

Shared by the MetaSelector estimator (`train`), the Table 3 MetaSelector rows (paper and
validated) and the per-user adaptation rows (one base model, no selector). Each call names
the [meta] settings it runs, so rows with different settings share one stage.

Glossary: *carry over* ([meta] refit_base_models): a module meta-trained on the support-row
models is applied to the single models (those models continued on all training rows) by adding
meta-training's change of theta to them.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..evaluation.metrics import sample_losses
from ..models import BaseModel
from ..random_streams import int_seed
from ..selection.ensemble import Ensemble
from ..selection.meta_settings import MetaSettings
from ..selection.meta_trainer import MetaTrainer
from ..selection.metasgd import MetaSGDEnsemble
from ..training.row_state import RowStore
from ..training.state import StateFile
from .context import TrainingContext


def carries_over(settings: MetaSettings) -> bool:
    """Modules trained on the support models are carried over to the single models at test time."""
    return settings.refit_base_models and settings.pretrain_on == "support"


def start_models(context: TrainingContext, settings: MetaSettings) -> dict[str, BaseModel]:
    """The pretrained base models meta-training starts from: the support-row models, or (the
    paper's Algorithm 1, line 3) the models trained on all training rows."""
    return context.base.support if settings.pretrain_on == "support" else context.base.singles


def carry_over_to_singles(module: MetaSGDEnsemble, context: TrainingContext, models: dict[str, BaseModel]) -> None:
    """Carry `module` over to the single models: theta += singles - support models."""
    module.carry_over(models, {k: context.base.singles[k] for k in models})


def held_out_losses(module: MetaSGDEnsemble, context: TrainingContext,
                    models: dict[str, BaseModel]) -> list[np.ndarray]:
    """Per checked user, the per-row LogLoss of the test-time setup on their held-out rows: the
    module (carried over to the single models, where its settings say so), each checked user
    adapting on their other training rows."""
    snapshot = module.snapshot()
    if carries_over(module.settings):
        carry_over_to_singles(module, context, models)
    tasks = context.check_tasks
    predictions = module.predict(context.tensors, tasks, [t.query for t in tasks])
    module.restore(snapshot)
    return [sample_losses(context.data.labels[t.query], p) for t, p in zip(tasks, predictions, strict=True)]


def test_like_loss(module: MetaSGDEnsemble, context: TrainingContext, models: dict[str, BaseModel]) -> float:
    """LogLoss of the test-time setup on held-out rows (`held_out_losses`, all rows together)."""
    losses = np.concatenate(held_out_losses(module, context, models))
    return float(losses.mean()) if len(losses) else float("nan")


def per_model_learner(context: TrainingContext, model: str) -> tuple[MetaSGDEnsemble, dict]:
    """Base model `model` meta-trained alone (no selector) and adapted per user with [meta], and
    its training notes: the "<model> + per-user adaptation" row, and the validated MetaSelector's
    start with [meta] model_start = "adapted". Trained once per context."""
    if model not in context.adapted:
        context.adapted[model] = meta_train(context, f"{model} + per-user adaptation", context.config.meta,
                                            [model], with_selector=False)
    return context.adapted[model]


def adapted_predictions(context: TrainingContext, model: str, tasks: list) -> list[np.ndarray]:
    """Base model `model`'s per-user-adaptation learner, adapted on each task's support rows, on
    its query rows. Meta-tested once per model and task list (the same list object): the
    "<model> + per-user adaptation" row and the rows that mix the adapted models all read it."""
    learner, _ = per_model_learner(context, model)
    seen = context.adapted_predictions.setdefault(model, [])
    for earlier, predictions in seen:
        if earlier is tasks:
            return predictions
    with context.timer(f"{model} + per-user adaptation meta-testing"):
        predictions = learner.predict(context.tensors, tasks, [t.query for t in tasks])
    seen.append((tasks, predictions))
    return predictions


def meta_train(context: TrainingContext, name: str, settings: MetaSettings, model_names: list[str],
               with_selector: bool = True) -> tuple[MetaSGDEnsemble, dict]:
    """Meta-train copies of the pretrained `model_names` (and a new selector) with `settings`;
    carry the result over to the single models where the settings say so. Returns the module,
    ready to adapt and predict, and its training notes."""
    models = {m: start_models(context, settings)[m] for m in model_names}
    selector = context.new_selector(settings) if with_selector else None
    profile = context.user_profile if with_selector and settings.reads_profile else None
    module = MetaSGDEnsemble(Ensemble(copy.deepcopy(models), selector), settings, context.device, profile)
    if context.parent is not None:  # continuing a saved model: its selector and Meta-SGD rates
        context.parent.start_module(module)
    if with_selector and settings.model_start == "adapted":
        for model in models:
            start, _ = per_model_learner(context, model)
            # The per-model module was carried over to the single models; its support-row
            # weights are those less the carried difference.
            shift = _carried_shift(context, model) if carries_over(start.settings) else None
            module.copy_model_from(model, start, shift)
    criterion = None
    if settings.stop_on == "held-out-rows" and context.check_tasks:
        def criterion() -> float:
            return test_like_loss(module, context, models)

        def per_user() -> list[np.ndarray]:
            return held_out_losses(module, context, models)
    with context.timer(f"{name} meta-training"):
        history = MetaTrainer(module).fit(context.tensors, context.train_tasks, context.valid_tasks,
                                          seed=int_seed(context.seed, "episodes"), progress=context.progress,
                                          desc=name, criterion=criterion,
                                          state=StateFile.named(context.state_dir, f"meta-{name}"))
    notes = {"best_epoch": history.best_epoch, "validation_logloss": history.best_validation,
             "epochs": history.epochs}
    if with_selector and criterion is not None and settings.selector_rate_scales:
        with context.timer(f"{name} selector rate choice"):
            notes["selector_rates"] = choose_selector_rates(module, settings.selector_rate_scales, per_user,
                                                            settings.selector_rate_min_z)
        context.timer.log(f"{name}: selector rates x{notes['selector_rates']['chosen']:g} "
                          f"(held-out LogLoss {notes['selector_rates']['validation']})")
    if carries_over(settings):
        carry_over_to_singles(module, context, models)
    return module, notes


def choose_selector_rates(module: MetaSGDEnsemble, scales: list[float], per_user, min_z: float) -> dict:
    """Multiply the selector's Meta-SGD rates by each factor of `scales` and keep the one whose
    held-out LogLoss (`per_user`: each checked user's per-row losses of the test-time setup) is
    lowest, if its gain over factor 1 (the rates as learned, always a candidate) is at least
    `min_z` standard errors; else factor 1. Returns {"chosen": factor, "validation": {factor:
    LogLoss}, "best": the lowest's factor, "gain": its gain, "z": gain / standard error}."""
    learned_rates = {n: a.clone() if isinstance(a, RowStore) else a.detach().clone()
                     for n, a in module.alpha.items() if n.startswith("selector.")}

    @torch.no_grad()
    def use(factor: float) -> None:  # exactly the learned rates times `factor`
        for n, a in learned_rates.items():
            module.alpha[n].copy_(a)
        module.scale_selector_rates(factor)

    losses = {}
    for factor in sorted({float(f) for f in scales} | {1.0}):
        use(factor)
        losses[factor] = per_user()
    scores = {f: float(np.concatenate(rows).mean()) for f, rows in losses.items()}
    best = min(scores, key=lambda f: (scores[f], f))  # ties: the smaller step
    gain, z = paired_gain(losses[1.0], losses[best])
    chosen = best if best == 1.0 or z >= min_z else 1.0
    use(chosen)
    return {"chosen": chosen, "validation": {f"{f:g}": round(v, 7) for f, v in sorted(scores.items())},
            "best": best, "gain": round(gain, 7), "z": round(z, 2) if np.isfinite(z) else None}


def paired_gain(base: list[np.ndarray], other: list[np.ndarray]) -> tuple[float, float]:
    """(The mean per-row LogLoss gain of `other` over `base`, that gain over its standard error),
    with per-user row lists of the same rows: users are the units of the standard error, since one
    user's rows move together when their weights do. z is 0 without a gain, inf without spread."""
    per_user = np.array([float((b - o).sum()) for b, o in zip(base, other, strict=True)])
    sizes = np.array([len(b) for b in base], dtype=np.float64)
    rows = sizes.sum()
    if not rows or len(per_user) < 2:
        return 0.0, 0.0
    gain = per_user.sum() / rows
    residual = per_user - sizes * gain
    spread = np.sqrt(len(per_user) / (len(per_user) - 1) * (residual ** 2).sum()) / rows
    if gain <= 0:
        return float(gain), 0.0
    return float(gain), float(gain / spread) if spread > 0 else float("inf")


def _carried_shift(context: TrainingContext, model: str) -> dict:
    """singles - support, per parameter of `model`: what carry_over_to_singles added."""
    support = dict(context.base.support[model].named_parameters())
    return {n: v.detach() - support[n].detach() for n, v in context.base.singles[model].named_parameters()}
