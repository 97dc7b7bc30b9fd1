"""The MetaSelector estimator: fit on a dataset, save, load, adapt to a user, score candidates.

    model = MetaSelector(config={"meta": {"epochs": 2}}).fit(load_data("ml-latest-small"))
    model.save("model/")
    model = MetaSelector.load("model/")
    model.predict_proba(candidates, history=events)   # one user's raw events

scikit-learn's conventions where they fit: `__init__` only stores its arguments, `fit`
returns the estimator, fitted attributes end in `_`, and using an unfitted estimator is a
clear error. Data is grouped by user, so `fit` takes a dataset, not (X, y).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import RunConfig, preset
from .data.dataset import EncodedDataset
from .data.splits import require_usable, split_users
from .errors import InputError, NotFittedError
from .evaluation.diagnostics import selector_diagnostics
from .evaluation.metrics import summary
from .experiment.context import Timer, TrainingContext, prepare_training
from .experiment.meta_training import meta_train
from .models import BaseModel
from .random_streams import int_seed
from .selection.tasks import UserTask
from .selection.user_profile import profile_inputs
from .settings import merge
from .training.tensors import TensorData

Events = pd.DataFrame | Sequence[dict] | None


@dataclass
class UserScores:
    """One user's candidates, scored."""

    probabilities: np.ndarray  # [n]
    weights: np.ndarray  # [n, K]: the selector's weight of each base model, after adaptation
    adapted: bool  # False: no history, scored by the un-adapted model
    history_events: int
    unknown: dict[str, int]  # candidates' users and items that fell to the unknown id


class MetaSelector:
    """K base models mixed per sample by a selector, meta-trained with users as tasks.

    models: base model names (LR, FM, FFM, DeepFM, "module:Class", "file.py:Class") or
    BaseModel subclasses; config: a RunConfig or a dict of settings laid over the dataset's
    preset (same keys as a TOML config: {"meta": {"epochs": 2}}); seed fixes the split,
    initialisation and episode order.
    """

    def __init__(self, models: Sequence[str | type[BaseModel]] | None = None,
                 config: RunConfig | dict | None = None, seed: int = 0, device: str = "cpu") -> None:
        self.models = models
        self.config = config
        self.seed = seed
        self.device = device

    # ---- fitting -------------------------------------------------------------------
    def _model_classes(self) -> tuple[list[str] | None, dict[str, type[BaseModel]]]:
        if self.models is None:
            return None, {}
        names, classes = [], {}
        for model in self.models:
            if isinstance(model, type):
                if not issubclass(model, BaseModel):
                    raise InputError(f"models: {model.__name__} is not a subclass of metaselector.models.BaseModel")
                name = f"{model.__module__}:{model.__qualname__}"
                names.append(name)
                classes[name] = model
            else:
                names.append(str(model))
        return names, classes

    def _resolved_config(self, dataset: str, base: RunConfig | None = None
                         ) -> tuple[RunConfig, dict[str, type[BaseModel]]]:
        """The configuration: `config` as given, or laid over `base` (a parent model's), else
        over the dataset's preset."""
        names, classes = self._model_classes()
        if isinstance(self.config, RunConfig):
            values = self.config.to_dict()
        else:
            values = merge((base or preset(dataset)).to_dict(), dict(self.config or {}))
        values.update({"dataset": dataset, "device": self.device})
        if names is not None:
            values["models"] = names
        return RunConfig.from_dict(values, where="MetaSelector config", classes=classes), classes

    def fit(self, data: EncodedDataset, progress: bool = False, log: Callable[[str], None] | None = None,
            state_dir: str | Path | None = None, init_from: str | Path | MetaSelector | None = None
            ) -> MetaSelector:
        """Pretrain the base models (support rows, then continued on all rows), meta-train the
        selector and theta with users as tasks, early-stopping on held-out training rows.
        `state_dir`: every learner's state is written there at each epoch boundary, and a fit
        started again with the same folder continues from it (to the same result).
        `init_from`: a saved model (folder, or as MetaSelector.load returns it) to continue from:
        its configuration unless `config` is given; `data` loaded with `load_data(...,
        grow_from=parent.encoder_)` so that every old user, item and value keeps its row (see
        experiment/continuation.py)."""
        if not isinstance(data, EncodedDataset) or data.encoder is None:
            raise InputError("fit: data must be a dataset from metaselector.load_data(...)")
        parent = self._parent(init_from, data) if init_from is not None else None
        config, classes = self._resolved_config(data.name, parent.model.config_ if parent else None)
        if parent is not None:
            parent.check_models(list(config.models))
        split = split_users(data.users, data.timestamps, self.seed, test_fraction=0.0,
                            temporal=config.split == "temporal")
        require_usable(split, data.labels, data.name)
        timer = Timer(log or (lambda message: None))
        torch.manual_seed(int_seed(self.seed, "dropout"))
        context = prepare_training(config, data, split, self.seed, timer, progress, classes,
                                   Path(state_dir) if state_dir is not None else None, parent=parent)
        self.parent_ = parent.record() if parent is not None else None
        self.trained_until_ = int(data.timestamps.max())
        return self._fit_context(context, classes)

    def _parent(self, init_from: str | Path | MetaSelector, data: EncodedDataset):
        from .experiment.continuation import ParentModel

        if isinstance(init_from, MetaSelector):
            parent = init_from
            if not hasattr(parent, "directory_"):
                raise InputError("init_from: pass a saved model folder, or a model from MetaSelector.load")
        else:
            parent = MetaSelector.load(init_from, model_classes=self._model_classes()[1])
        try:
            return ParentModel(parent, data.encoder, parent.directory_)
        except InputError as err:
            raise InputError(f"--init-from {parent.directory_}: {err}; load the new data with "
                             "load_data(..., grow_from=MetaSelector.load(parent).encoder_)") from None

    def _fit_context(self, context: TrainingContext, classes: dict | None = None) -> MetaSelector:
        """Meta-train with [meta] as configured, then measure what the selector does per user on
        the held-out rows (`diagnostics_`, whose `selector_kind` says learned or global blend)."""
        module, notes = meta_train(context, "MetaSelector", context.config.meta, list(context.config.models))
        return self._set_fitted(module, context.config, context.data.encoder, classes or {}, context.data.name,
                                dict(context.data.sources), context.seed, notes,
                                _held_out_diagnostics(module, context))

    def _set_fitted(self, module, config: RunConfig, encoder, classes: dict, dataset: str, sources: dict,
                    seed: int, notes: dict, diagnostics: dict) -> MetaSelector:
        """The fitted state, set in one place by `fit` and by `load`."""
        self.module_, self.config_, self.encoder_ = module, config, encoder
        self.model_names_, self.model_classes_ = list(config.models), dict(classes)
        self.dataset_, self.sources_, self.seed_ = dataset, sources, seed
        self.training_notes_, self.diagnostics_ = notes, diagnostics
        return self

    @property
    def selector_kind_(self) -> str:
        """"learned": weights differ across users; "global-blend": every user and candidate gets
        the same weights (meta-training did not beat its blend start on held-out rows)."""
        self._check_fitted()
        return self.diagnostics_.get("selector_kind", "unknown")

    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError("this MetaSelector is not fitted yet: call fit(data) or MetaSelector.load(dir)")

    # ---- scoring -------------------------------------------------------------------
    def score_users(self, requests: Sequence[tuple[Events, Events]],
                    timings: dict[str, float] | None = None) -> list[UserScores]:
        """Adapt to each user's history and score their candidates, all users in batched
        (vmapped) calls. A request is (history, candidates), each a DataFrame or list of dicts
        with raw columns: history user, item, rating (or label), timestamp; candidates user,
        item, timestamp (custom data: plus their declared per-event columns). `timings`: filled
        with the seconds spent encoding and adapting-and-scoring (one vmapped call)."""
        self._check_fitted()
        frames, groups, support, evaluation, counts = [], [], [], [], []
        offset = 0
        for index, (history, candidates) in enumerate(requests):
            h = _frame(history, f"request {index}: history", needs_label=True)
            c = _frame(candidates, f"request {index}: candidates", needs_label=False)
            users = pd.concat([h["user"], c["user"]]).astype(str).unique()
            if len(users) > 1:
                raise InputError(f"request {index}: one user per request, got {', '.join(users[:3])}")
            frames += [h, c]
            groups.append(np.full(len(h) + len(c), index))
            support.append(offset + np.arange(len(h)))
            evaluation.append(offset + len(h) + np.arange(len(c)))
            counts.append(len(h))
            offset += len(h) + len(c)
        if not frames:
            return []
        events = pd.concat(frames, ignore_index=True)
        # Candidates count as the user's interactions for later candidates' history features, as
        # rows of a dataset do offline; candidates of one request time never see each other.
        start = time.perf_counter()
        encoded = self.encoder_.encode(events, groups=np.concatenate(groups))
        labels = encoded.labels
        if np.isnan(labels[np.concatenate(support)] if offset else labels).any():
            raise InputError("history: every event needs a 'rating' (or a 0/1 'label')")
        tensors = TensorData(torch.from_numpy(encoded.ids), torch.from_numpy(encoded.weights),
                             torch.from_numpy(np.nan_to_num(labels)), torch.from_numpy(np.concatenate(groups)),
                             *profile_inputs(events, self.module_.profile is not None,
                                             self.encoder_.label_rule.threshold is not None))
        tasks = [UserTask(i, s, e) for i, (s, e) in enumerate(zip(support, evaluation, strict=True))]
        encoded_at = time.perf_counter()
        scored = self.module_.predict(tensors, tasks, evaluation, with_weights=True)
        if timings is not None:
            timings.update(encode=encoded_at - start, adapt_and_score=time.perf_counter() - encoded_at)
        unknown_user = self.encoder_.lookup("@user", events["user"]) < 0
        unknown_item = self.encoder_.lookup("@item", events["item"]) < 0
        return [UserScores(p, w, count > 0, count, {"users": int(unknown_user[e].sum()),
                                                     "items": int(unknown_item[e].sum())})
                for (p, w), count, e in zip(scored, counts, evaluation, strict=True)]

    def predict_proba(self, candidates: Events, history: Events = None) -> np.ndarray:
        """One user's candidates: the probability of a positive label, after adapting to `history`."""
        return self.score_users([(history, candidates)])[0].probabilities

    def adapt(self, history: Events) -> AdaptedUser:
        """A user's view of the model: validates `history` now; its predict_proba adapts to it."""
        self._check_fitted()
        return AdaptedUser(self, _frame(history, "history", needs_label=True))

    def evaluate(self, history: Events, test: Events) -> dict[str, float]:
        """AUC, LogLoss and gAUC on `test` events (with ratings or labels), each user adapting to
        their events in `history`."""
        self._check_fitted()
        h = _frame(history, "history", needs_label=True)
        t = _frame(test, "test", needs_label=True)
        users = t["user"].astype(str)
        by_user = dict(tuple(h.groupby(h["user"].astype(str), sort=False)))
        order = list(dict.fromkeys(users))
        requests = [(by_user.get(u, h.iloc[:0]), t[users == u]) for u in order]
        scores = self.score_users(requests)
        labels = np.concatenate([self.encoder_.label_rule.labels(c) for _, c in requests])
        codes = np.repeat(np.arange(len(order)), [len(c) for _, c in requests])
        return summary(codes, labels, np.concatenate([s.probabilities for s in scores]))

    # ---- saving --------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the saved model: manifest.json, encoder.json, weights.safetensors."""
        from .saved_model import save_model

        self._check_fitted()
        return save_model(self, Path(directory))

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu",
             model_classes: dict[str, type[BaseModel]] | None = None) -> MetaSelector:
        """Read a saved model. No code is run from the files: base models are built from the
        registry, or from `model_classes` (name -> class) for your own models."""
        from .saved_model import load_model

        return load_model(cls, Path(directory), device, model_classes or {})


def _held_out_diagnostics(module, context: TrainingContext) -> dict:
    """Selector diagnostics on the checked users' held-out rows (each user adapting on their other
    training rows; no model trained on these rows), else on held-out users' query rows."""
    tasks = context.check_tasks or context.valid_tasks or context.train_tasks
    scored = module.predict(context.tensors, tasks, [t.query for t in tasks], with_weights=True)
    rows = np.concatenate([t.query for t in tasks])
    return selector_diagnostics(list(context.config.models), [w for _, w in scored],
                                np.array([len(t.support) for t in tasks]),
                                context.single_probabilities[rows].double().numpy(), context.data.labels[rows],
                                context.seed)


class AdaptedUser:
    """One user's history, checked and held; `predict_proba` adapts to it and scores candidates."""

    def __init__(self, model: MetaSelector, history: pd.DataFrame) -> None:
        self.model, self.history = model, history

    def predict_proba(self, candidates: Events) -> np.ndarray:
        return self.model.predict_proba(candidates, self.history)


REQUIRED = ("user", "item", "timestamp")


def _frame(events: Events, what: str, needs_label: bool) -> pd.DataFrame:
    """Events as a DataFrame with the required columns (`needs_label`: a rating or a label)."""
    if events is None:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in (*REQUIRED, "rating")})
    try:
        frame = events if isinstance(events, pd.DataFrame) else pd.DataFrame(list(events))
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}: expected a DataFrame or a list of records ({err})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    if needs_label and "rating" not in frame.columns and "label" not in frame.columns:
        missing.append("rating (or label)")
    if missing and len(frame):
        raise InputError(f"{what}: missing column(s) {', '.join(missing)}")
    if not len(frame):
        frame = frame.reindex(columns=list(dict.fromkeys([*frame.columns, *REQUIRED, "rating"])))
    return frame.reset_index(drop=True)
