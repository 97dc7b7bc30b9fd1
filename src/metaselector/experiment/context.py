"""What every selection method of one seed shares: the split, the base models, the tasks.

Built in stages: split and tasks, then base models; each method then fits on this context and
predicts for tasks. `train` builds the same context with no test rows.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.dataset import EncodedDataset
from ..data.splits import Split
from ..models import BaseModel, ModelSettings, resolve_model
from ..random_streams import generator, int_seed
from ..selection.meta_settings import MetaSettings
from ..selection.selector import Selector, global_mixture_logits, start_from_mixture
from ..selection.tasks import UserTask, sample_tasks, tasks_for
from ..selection.user_profile import FEATURES as PROFILE_FEATURES
from ..selection.user_profile import UserProfile
from ..training.base_models import BaseModels, holdout_rows, train_base_models
from ..training.objective import has_ratings, no_ratings
from ..training.pretrain import PretrainSettings
from ..training.tensors import TensorData, predict


@dataclass
class Timer:
    """Seconds and the process's peak memory per named stage, logged as they finish."""

    log: Callable[[str], None] = print
    stages: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str) -> _Stage:
        return _Stage(self, name)


class _Stage:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()
        self.timer.log(f"[{self.name}] ...")

    def __exit__(self, *exc) -> None:
        elapsed = time.perf_counter() - self.start
        t = self.timer
        t.stages[self.name] = t.stages.get(self.name, 0.0) + elapsed
        # Peak resident memory so far (Linux reports KiB): where it grows is the stage that needed it.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t.peaks[self.name] = max(t.peaks.get(self.name, 0.0), peak)
        t.log(f"[{self.name}] {elapsed:.1f} s, peak memory so far {peak:.0f} MB")


def model_settings(config: RunConfig, name: str | None = None) -> ModelSettings:
    """Base model `name`'s sizes: its [model_settings.<name>] table, else the shared settings."""
    own = config.model_settings.get(name) if name is not None else None

    def pick(key: str, shared):
        value = getattr(own, key) if own is not None else None
        return shared if value is None else value

    return ModelSettings(embedding_dim=pick("embedding_dim", config.embedding_dim),
                         hidden=list(pick("hidden", config.deepfm_hidden)), dropout=pick("dropout", config.dropout))


def pretrain_settings(config: RunConfig, name: str) -> PretrainSettings:
    """Base model `name`'s pretraining: [pretrain], with what its [model_settings.<name>] sets."""
    own = config.model_settings.get(name)
    if own is None:
        return config.pretrain
    keys = ("l2_embedding", "l2_scope", "adam_lr", "epochs", "patience", "rating_loss")
    return replace(config.pretrain, **{k: getattr(own, k) for k in keys if getattr(own, k) is not None})


@dataclass
class TrainingContext:
    config: RunConfig
    data: EncodedDataset
    tensors: TensorData
    split: Split
    seed: int
    device: torch.device
    holdout: np.ndarray  # the base models' shared validation rows (meta-training never sees them)
    base: BaseModels
    train_tasks: list[UserTask]  # meta-training users: support and query rows, holdout left out
    valid_tasks: list[UserTask]  # held-out training users (their query LogLoss is recorded)
    check_tasks: list[UserTask]  # users adapting on their other training rows, judged on the holdout
    timer: Timer
    progress: bool = False
    notes: dict = field(default_factory=dict)
    state_dir: Path | None = None  # training state at epoch boundaries, for resuming
    adapted: dict = field(default_factory=dict)  # base model -> (its per-user-adaptation learner, notes)
    # base model -> [(task list, that learner's query-row predictions)]: several report rows mix
    # the same adapted models on the same users, and meta-testing them once is enough
    adapted_predictions: dict = field(default_factory=dict)
    parent: object | None = None  # continuation.ParentModel: a saved model this training continues

    @property
    def refit(self) -> bool:
        """Selectors learn on the support models and are applied to the singles at test time."""
        return self.config.meta.refit_base_models and self.config.meta.pretrain_on == "support"

    @property
    def all_rows(self) -> np.ndarray:
        return np.arange(len(self.data.labels))

    @cached_property
    def support_probabilities(self) -> torch.Tensor:
        """The support models' probabilities for every row [N, K] (the selectors' inputs)."""
        return torch.as_tensor(_probabilities(self.base.support, self.tensors, self.all_rows, self.device))

    @cached_property
    def single_probabilities(self) -> torch.Tensor:
        """The single models' probabilities for every row [N, K]."""
        if self.base.singles is self.base.support:
            return self.support_probabilities
        return torch.as_tensor(_probabilities(self.base.singles, self.tensors, self.all_rows, self.device))

    @property
    def test_time_probabilities(self) -> torch.Tensor:
        """Base predictions that selectors see at test time: the singles' with refit."""
        return self.single_probabilities if self.refit else self.support_probabilities

    @cached_property
    def blend_logits(self) -> torch.Tensor:
        """The best single blend of the support models, fitted on the meta-training users' query
        rows (out-of-sample for those models): the Global Blend row and the selectors' start."""
        rows = np.concatenate([t.query for t in self.train_tasks])
        return global_mixture_logits(self.support_probabilities[rows], self.tensors.labels[rows])

    @cached_property
    def profile_blend(self) -> torch.Tensor:
        """Feature-weighted stacking's weights [K, 1 + profile features] (the blend's logits as a
        linear function of the user's profile), fitted on the meta-training users' query rows:
        the Feature-weighted Stacking row and the selector's "profile-stacking" start."""
        from .methods.stacking import fit_profile_blend

        weights, self.notes["profile_blend"] = fit_profile_blend(self)
        return weights

    @cached_property
    def user_profile(self) -> UserProfile:
        """User profiles' constants (item popularity, scaling) from the meta-training users'
        support rows: the selector's user-level inputs and feature-weighted stacking's."""
        return UserProfile.fit(self.data.layout, self.tensors, [t.support for t in self.train_tasks])

    def new_selector(self, meta: MetaSettings) -> Selector:
        """A user-level selector for the [meta] settings `meta`, initialised from the seed (and
        from the blend, with selector_start = "global-mixture")."""
        torch.manual_seed(int_seed(self.seed, "selector-init"))
        selector = Selector(self.data.layout, ModelSettings(self.config.embedding_dim, list(meta.selector_hidden)),
                            len(self.config.models), uses_predictions=meta.selector_uses_predictions,
                            profile_features=len(PROFILE_FEATURES) if meta.reads_profile else 0)
        if meta.selector_start == "global-mixture":
            start_from_mixture(selector, self.blend_logits)
        elif meta.selector_start == "profile-stacking":
            start_from_mixture(selector, self.profile_blend[:, 0].float(), self.profile_blend[:, 1:].float())
        return selector


def _probabilities(models: dict, tensors: TensorData, rows: np.ndarray, device) -> np.ndarray:
    return np.stack([predict(m, tensors, rows, device=device) for m in models.values()], axis=1)


def check_rating_models(config: RunConfig, ratings, classes: dict[str, type[BaseModel]] | None = None,
                        names: list[str] | None = None) -> None:
    """Refuse, before any training, a model of `names` (default: the run's) that regresses
    ratings (RatingMF) on data whose `ratings` (one per event, NaN or None where there are none)
    hold none: pretraining would otherwise stop there after training the models listed before it."""
    if has_ratings(ratings):
        return
    for name in config.models if names is None else names:
        cls = (classes or {}).get(name) or resolve_model(name)
        weight = pretrain_settings(config, name).rating_loss
        if cls.predicts_ratings and weight:
            raise no_ratings(name, weight)


def prepare_training(config: RunConfig, data: EncodedDataset, split: Split, seed: int, timer: Timer,
                     progress: bool = False, model_classes: dict[str, type[BaseModel]] | None = None,
                     state_dir: Path | None = None, parent=None) -> TrainingContext:
    """Stages 1 and 2 of a seed: tasks from the split, then the base models. `parent` (a
    continuation.ParentModel): base models and meta-training start from that saved model."""
    device = torch.device(config.device)
    tensors = TensorData.from_encoded(data)
    check_rating_models(config, tensors.ratings, model_classes)
    newer = parent.unseen_rows(data) if parent is not None else None
    holdout = holdout_rows(split.support, config.pretrain.validation_fraction, seed, among=newer)
    base = train_base_models(list(config.models), data.layout, {m: model_settings(config, m) for m in config.models},
                             {m: pretrain_settings(config, m) for m in config.models}, tensors,
                             split.support, split.train, holdout, seed, device, progress,
                             on_support=config.meta.pretrain_on == "support", stage=timer, classes=model_classes,
                             state_dir=state_dir, parent=parent)
    # Meta-training never sees the base models' validation rows: they are the held-out rows on
    # which the test-time setup is checked (meta stop_on = "held-out-rows").
    all_tasks = tasks_for(data.users, np.setdiff1d(split.support, holdout), split.query)
    order = generator(seed, "validation-users").permutation(len(all_tasks))
    n_valid = int(round(len(all_tasks) * config.meta.validation_users))
    if config.meta.validation_users > 0:  # at least one held-out user, and one left to train on
        n_valid = min(max(n_valid, 1), len(all_tasks) - 1)
    check_tasks = [t for t in tasks_for(data.users, np.setdiff1d(split.train, holdout), holdout) if len(t.query)]
    context = TrainingContext(
        config=config, data=data, tensors=tensors, split=split, seed=seed, device=device, holdout=holdout,
        base=base, train_tasks=[all_tasks[i] for i in order[n_valid:]],
        valid_tasks=[all_tasks[i] for i in order[:n_valid]],
        check_tasks=sample_tasks(check_tasks, config.meta.check_users, int_seed(seed, "check-users")),
        timer=timer, progress=progress, state_dir=state_dir, parent=parent)
    context.notes["base_model_validation_rows"] = int(len(holdout))
    if newer is not None:
        timer.log(f"held-out rows: {len(holdout)} of the {len(newer)} events newer than the parent model's data")
    return context
