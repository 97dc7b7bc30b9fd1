"""`metaselector tune`: each base model's settings searched on validation rows only.

For each base model, one Optuna study (TPE sampler, median pruner on the per-epoch validation
LogLoss) stored in `DIR/studies.sqlite`, so a killed search continues where it stopped. A trial
trains the model as a run does: pretrained on the support rows of the seed's split with the
trial's settings, then continued on all training rows, both early-stopping on the base models'
shared validation slice (a 10% slice of the support rows that no model trains on). It scores
that slice's LogLoss under the continued model, the one a run uses as the single model and at
test time (pruning watches the first stage's epochs): no test row is ever seen. The first
trial of a study is the current settings, so the summary says what tuning gained. The best
settings are written to `DIR/tuned.toml` as [model_settings.<model>] tables, which `reproduce`,
`train` and `tune` read with --config.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import tomli_w
import torch

from .config import ModelOverrides, RunConfig
from .data.dataset import EncodedDataset
from .data.splits import require_usable, split_users
from .experiment.context import check_rating_models, model_settings, pretrain_settings
from .io_utils import atomic_write_text
from .models import BaseModel, resolve_model
from .models.base import SearchParam
from .random_streams import int_seed
from .training.base_models import holdout_rows, new_model
from .training.pretrain import pretrain
from .training.tensors import TensorData

STORE = "studies.sqlite"
OVERLAY = "tuned.toml"


@dataclass
class TuneResult:
    model: str
    trials: int  # finished trials (complete or pruned), earlier runs' included
    pruned: int
    start_logloss: float | None  # the current settings (the study's first trial)
    best_logloss: float | None
    best: dict
    seconds: float


def _suggest(trial, key: str, param: SearchParam):
    if param.choices:
        return trial.suggest_categorical(key, list(param.choices))
    if param.integer:
        return trial.suggest_int(key, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(key, param.low, param.high, log=param.log)


def _as_setting(key: str, value):
    """A suggested value as the setting it stands for ("256-128" -> [256, 128])."""
    return [int(v) for v in str(value).split("-")] if key == "hidden" else value


def _start_values(config: RunConfig, name: str, space: dict[str, SearchParam]) -> dict:
    """The model's current settings, as the first trial (where the space can hold them)."""
    current = {**model_settings(config, name).__dict__, **pretrain_settings(config, name).__dict__}
    out = {}
    for key, param in space.items():
        value = current.get(key)
        if key == "hidden":
            value = "-".join(map(str, value))
        if param.choices:
            if value in param.choices:
                out[key] = value
        elif value is not None and param.low <= value <= param.high:
            out[key] = value
    return out


class _Search:
    """One model's objective: pretrain with a trial's settings, LogLoss on the validation slice."""

    def __init__(self, config: RunConfig, data: EncodedDataset, name: str, index: int, cls: type[BaseModel],
                 seed: int, device: torch.device) -> None:
        self.config, self.data, self.name, self.index, self.cls = config, data, name, index, cls
        self.seed, self.device = seed, device
        self.tensors = TensorData.from_encoded(data)
        split = split_users(data.users, data.timestamps, seed, temporal=config.split == "temporal")
        require_usable(split, data.labels, data.name)
        self.support, self.train = split.support, split.train
        self.holdout = holdout_rows(split.support, config.pretrain.validation_fraction, seed)

    def __call__(self, trial) -> float:
        import optuna

        chosen = {k: _as_setting(k, _suggest(trial, k, p)) for k, p in self.cls.search_space.items()}
        own = self.config.model_settings.get(self.name, ModelOverrides())
        config = replace(self.config, model_settings={**self.config.model_settings,
                                                      self.name: replace(own, **chosen)})
        torch.manual_seed(int_seed(self.seed, "dropout"))
        model = new_model(self.name, self.index, self.data.layout, model_settings(config, self.name), self.seed,
                          {self.name: self.cls}).to(self.device)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        settings = pretrain_settings(config, self.name)
        # Trained as a run trains it (training/base_models.py): on the support rows, then continued
        # on all training rows and scored as continued; or, pretrain_on = "train", on all at once.
        on_support = config.meta.pretrain_on == "support"
        result = pretrain(model, self.tensors, self.support if on_support else self.train, settings,
                          seed=int_seed(self.seed, "batch-order", self.index, 0), device=self.device,
                          progress=False, valid_rows=self.holdout, on_epoch=report)
        if on_support:
            result = pretrain(model, self.tensors, self.train, settings,
                              seed=int_seed(self.seed, "batch-order", self.index, 1), device=self.device,
                              progress=False, valid_rows=self.holdout, optimizer_state=result.optimizer_state)
        return float(result.validation_logloss)


def tune(config: RunConfig, data: EncodedDataset, out_dir: Path, trials: int, timeout: float | None, seed: int,
         progress: bool = True, classes: dict[str, type[BaseModel]] | None = None,
         log: Callable[[str], None] = print, only: list[str] | None = None) -> list[TuneResult]:
    """Search every model of `config.models` (or of `only`) that declares a search space
    (`trials` finished trials per model in all, `timeout` seconds per model per call); write
    DIR/tuned.toml.

    A model is initialised and shuffled from the streams of its place in the run's model list
    (`config.models`, then the models of `only` it lacks), as `reproduce` and `train` do: its
    validation LogLoss moves by up to 0.004 with the initialisation alone, so a search seeded as
    another place would choose for a model the run never trains."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out_dir / STORE}")
    results = []
    places = list(config.models) + [name for name in only or [] if name not in config.models]
    for index, name in enumerate(places):
        if only is not None and name not in only:
            continue
        cls = (classes or {}).get(name) or resolve_model(name)
        if not cls.search_space:
            log(f"{name}: no search space declared; its settings are kept")
            continue
        if cls.predicts_ratings:  # on data without ratings, refused before its study starts
            check_rating_models(config, data.ratings, classes, [name])
        start = time.perf_counter()
        study = optuna.create_study(
            study_name=f"tune-{name}", storage=storage, load_if_exists=True, direction="minimize",
            sampler=optuna.samplers.TPESampler(seed=int_seed(seed, "tune", index) % 2**32),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
        finished = _finished(study)
        if not study.trials:
            study.enqueue_trial(_start_values(config, name, cls.search_space))
        if trials > len(finished):
            objective = _Search(config, data, name, index, cls, seed, torch.device(config.device))
            study.optimize(objective, n_trials=trials - len(finished), timeout=timeout, show_progress_bar=progress)
        results.append(_result(study, name, time.perf_counter() - start))
    _write_overlay(out_dir / OVERLAY, results)
    return results


def _finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def _result(study, name: str, seconds: float) -> TuneResult:
    from optuna.trial import TrialState

    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value) if complete else None
    first = study.trials[0] if study.trials and study.trials[0].state == TrialState.COMPLETE else None
    return TuneResult(name, len(_finished(study)), sum(t.state == TrialState.PRUNED for t in study.trials),
                      first.value if first else None, best.value if best else None,
                      {k: _as_setting(k, v) for k, v in best.params.items()} if best else {}, seconds)


def _write_overlay(path: Path, results: list[TuneResult]) -> None:
    tables = {r.model: r.best for r in results if r.best}
    text = ("# Written by `metaselector tune`: each model's settings with the lowest LogLoss on the\n"
            "# base models' validation slice. Use with --config (or merge into your own file).\n")
    atomic_write_text(path, text + tomli_w.dumps({"model_settings": tables}))


def summary_table(results: list[TuneResult]) -> str:
    lines = ["| model | trials (pruned) | start LogLoss | best LogLoss | best settings | seconds |",
             "|---|---|---|---|---|---|"]
    for r in results:
        start = f"{r.start_logloss:.5f}" if r.start_logloss is not None else "-"
        best = f"{r.best_logloss:.5f}" if r.best_logloss is not None else "-"
        settings = ", ".join(f"{k} = {_short(v)}" for k, v in r.best.items())
        lines.append(f"| {r.model} | {r.trials} ({r.pruned}) | {start} | {best} | {settings} | {r.seconds:.0f} |")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

