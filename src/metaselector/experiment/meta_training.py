"""Meta-training on a seed's context, stopped on the test-time setup over held-out rows.

Shared by the MetaSelector estimator (`train`), the Table 3 MetaSelector rows (paper and
validated) and the per-user adaptation rows (one base model, no selector). Each call names
the [meta] settings it runs, so rows with different settings share one stage.
"""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation.metrics import logloss
from ..models import BaseModel
from ..selection.ensemble import Ensemble
from ..selection.meta import MetaLearner, MetaSettings, clone_models
from ..training.row_state import RowStore
from ..training.state import StateFile
from .context import TrainingContext


def refits(settings: MetaSettings) -> bool:
    """Learners trained on the support models are applied to the single models at test time."""
    return settings.refit_base_models and settings.pretrain_on == "support"


def start_models(context: TrainingContext, settings: MetaSettings) -> dict[str, BaseModel]:
    """The pretrained base models meta-training starts from: the support-row models, or (the
    paper's Algorithm 1, line 3) the models trained on all training rows."""
    return context.base.support if settings.pretrain_on == "support" else context.base.singles


def carry_to_singles(learner: MetaLearner, context: TrainingContext, models: dict[str, BaseModel]) -> None:
    """Apply the learner to the single models: theta += singles - support models."""
    learner.transfer_base_models(models, {k: context.base.singles[k] for k in models})


def test_like_loss(learner: MetaLearner, context: TrainingContext, models: dict[str, BaseModel]) -> float:
    """LogLoss of the test-time setup on held-out rows: the learner's selector and theta change
    (carried onto the single models, with refit), each checked user adapting on their other
    training rows."""
    snapshot = learner.state()
    if refits(learner.settings):
        carry_to_singles(learner, context, models)
    tasks = context.check_tasks
    p = np.concatenate(learner.predict(context.tensors, tasks, [t.query for t in tasks]))
    learner.load_state(snapshot)
    return logloss(context.data.labels[np.concatenate([t.query for t in tasks])], p)


def per_model_learner(context: TrainingContext, model: str) -> tuple[MetaLearner, dict]:
    """Base model `model` meta-trained alone (no selector) and adapted per user with [meta], and
    its training notes: the "<model> + per-user adaptation" row, and the validated MetaSelector's
    start with [meta] model_start = "adapted". Trained once per context."""
    if model not in context.adapted:
        context.adapted[model] = meta_train(context, f"{model} + per-user adaptation", context.config.meta,
                                            [model], with_selector=False)
    return context.adapted[model]


def meta_train(context: TrainingContext, name: str, settings: MetaSettings, model_names: list[str],
               with_selector: bool = True) -> tuple[MetaLearner, dict]:
    """Meta-train copies of the pretrained `model_names` (and a new selector) with `settings`;
    with refit, carry the result onto the single models. Returns the learner, ready to adapt
    and predict, and its training notes."""
    models = {m: start_models(context, settings)[m] for m in model_names}
    selector = context.new_selector(settings) if with_selector else None
    learner = MetaLearner(Ensemble(clone_models(models), selector), settings, context.device)
    if with_selector and settings.model_start == "adapted":
        for model in models:
            start, _ = per_model_learner(context, model)
            # The per-model learner was carried onto the single models; its support-row weights
            # are those less the carried difference.
            shift = _carried_shift(context, model) if refits(start.settings) else None
            _start_model_from(learner, model, start, shift)
    criterion = None
    if settings.stop_on == "held-out-rows" and context.check_tasks:
        def criterion() -> float:
            return test_like_loss(learner, context, models)
    with context.timer(f"{name} meta-training"):
        history = learner.fit(context.tensors, context.train_tasks, context.valid_tasks, seed=context.seed,
                              progress=context.progress, desc=name, criterion=criterion,
                              state=StateFile.named(context.state_dir, f"meta-{name}"))
    if refits(settings):
        carry_to_singles(learner, context, models)
    notes = {"best_epoch": history.best_epoch, "validation_logloss": history.best_validation,
             "epochs": history.epochs}
    return learner, notes


@torch.no_grad()
def _start_model_from(learner: MetaLearner, name: str, other: MetaLearner, shift: dict | None) -> None:
    """Base model `name`'s theta and Meta-SGD rates in `learner` from `other` (a learner holding
    that model), less `shift` per parameter (to undo a change carried onto other weights)."""
    mine, theirs = f"models.{learner.ensemble.key_of[name]}.", f"models.{other.ensemble.key_of[name]}."
    for n, p in learner.params.items():
        if n.startswith(mine):
            source = theirs + n[len(mine):]
            p.copy_(other.params[source] - (shift[n[len(mine):]] if shift else 0))
            rate = other.alpha[source]
            learner.alpha[n].copy_(rate.clone() if isinstance(rate, RowStore) else rate)


def _carried_shift(context: TrainingContext, model: str) -> dict:
    """singles - support, per parameter of `model`: what carry_to_singles added."""
    support = dict(context.base.support[model].named_parameters())
    return {n: v.detach() - support[n].detach() for n, v in context.base.singles[model].named_parameters()}
