"""`metaselector reproduce`: every row of Table 3, Table 1 and Figure 3, for N seeds.

What each method trains on (all are judged on the same test rows):
  single models            all training rows (support + query), less one validation slice of
                           the support rows (10%, shared by every base model) for early
                           stopping; with meta_pretrain_on = "support" (default) each is the
                           support-row model below, trained on, warm, over all training rows
  sample-level selector    base models pretrained on the support rows (75% of training, as
                           the paper); the classifier learns on the query rows (25%)
  Global Blend             one set of weights for all samples, fitted on the meta-training
                           users' query rows with the support-row models, applied to the
                           single models
  MetaSelector, MetaSelector-Simplified, "<model> + per-user adaptation"
                           base models pretrained on `meta_pretrain_on` rows (default: support,
                           so the query losses the selector learns from are out-of-sample);
                           episodes on the support/query parts of the meta-training users
                           (the base models' validation slice left out); MetaSelector and
                           the per-user adaptations stop (meta_stop_on = "held-out-rows") on
                           the test-time setup's LogLoss over that validation slice, which no
                           model has trained on; Simplified on held-out training users' query
                           LogLoss
  refit (default on)       at test time every selector, the sample-level one included, is
                           applied to the single-model rows' models (the support models
                           continued on all training rows), carrying over the change
                           meta-training made to theta; each test user adapts on all their
                           training rows
  oracles                  choose with the test labels: upper bounds over the single models,
                           not methods
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig
from .data.features import EncodedDataset
from .data.splits import Split, split_users
from .evaluation.metrics import logloss, per_user_logloss, summary
from .models import ModelSettings, build_model
from .models.checkpoint import save_checkpoint
from .selection import oracles
from .selection.ensemble import Ensemble
from .selection.meta import MetaLearner, MetaSettings, UserTask, clone_models
from .selection.sample_level import fit_sample_selector, predict_sample_selector
from .selection.selector import Selector, global_mixture_logits, start_from_mixture
from .selection.simplified import SimplifiedSelector
from .training.pretrain import PretrainSettings, pretrain
from .training.tensors import TensorData, predict


@dataclass
class SeedResult:
    seed: int
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    new_user_rows: dict[str, dict[str, float]] = field(default_factory=dict)
    user_losses: dict[str, np.ndarray] = field(default_factory=dict)
    user_proportions: dict[str, float] = field(default_factory=dict)
    stages: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    notes: dict[str, object] = field(default_factory=dict)


def tasks_for(users: np.ndarray, support: np.ndarray, query: np.ndarray) -> list[UserTask]:
    """One UserTask per user who has support rows; rows grouped by user in one pass."""
    def grouped(rows):
        order = np.argsort(users[rows], kind="stable")
        rows = rows[order]
        codes, starts = np.unique(users[rows], return_index=True)
        return dict(zip(codes.tolist(), np.split(rows, starts[1:]), strict=True))

    s, q = grouped(support), grouped(query)
    empty = np.empty(0, dtype=np.int64)
    return [UserTask(u, rows, q.get(u, empty)) for u, rows in s.items()]


class Timer:
    def __init__(self, stages: dict[str, float], peaks: dict[str, float], log: Callable[[str], None]) -> None:
        self.stages, self.peaks, self.log = stages, peaks, log

    def __call__(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()
                timer.log(f"[{name}] ...")

            def __exit__(self, *exc):
                elapsed = time.perf_counter() - self.start
                timer.stages[name] = timer.stages.get(name, 0.0) + elapsed
                # The process's peak resident memory so far (Linux reports KiB): where it grows
                # is the stage that needed it.
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                timer.peaks[name] = max(timer.peaks.get(name, 0.0), peak)
                timer.log(f"[{name}] {elapsed:.1f} s, peak memory so far {peak:.0f} MB")

        return _Stage()


def model_settings(config: RunConfig, name: str) -> ModelSettings:
    return ModelSettings(embedding_dim=config.embedding_dim, hidden=list(config.deepfm_hidden),
                         dropout=config.dropout)


def pretrain_settings(config: RunConfig) -> PretrainSettings:
    """RunConfig holds the pretraining settings under the same names (epochs: pretrain_epochs)."""
    shared = {f.name: getattr(config, f.name) for f in fields(PretrainSettings) if f.name != "epochs"}
    return PretrainSettings(epochs=config.pretrain_epochs, **shared)


def meta_settings(config: RunConfig) -> MetaSettings:
    return MetaSettings(
        users_per_episode=config.users_per_episode, inner_steps=config.inner_steps, inner_lr=config.inner_lr,
        outer_lr=config.outer_lr, selector_outer_lr=config.selector_outer_lr, alpha_outer_lr=config.alpha_outer_lr,
        epochs=config.meta_epochs,
        patience=config.meta_patience, first_order=config.first_order, max_episodes=config.meta_max_episodes,
    )


def holdout_rows(support: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The base models' validation slice: one random `fraction` of the support rows, shared by
    every model, so no base model (support-trained or continued) ever trains on it."""
    shuffled = np.random.default_rng(seed + 11).permutation(support)
    return np.sort(shuffled[:max(1, int(round(len(support) * fraction)))])


def _pretrain_set(config, data, tensors, rows, seed, device, progress, tag, checkpoint_dir, start=None,
                  holdout=None):
    """Pretrain every base model on `rows`, early-stopping on the `holdout` rows; with `start`
    (earlier models and their results), continue those models instead, holding out the same
    validation rows (a warm start)."""
    models, results = {}, {}
    for index, name in enumerate(config.models):
        torch.manual_seed(seed * 1000 + index)
        model = build_model(name, data.layout, model_settings(config, name)).to(device)
        held_out = {} if holdout is None else {"valid_rows": holdout}
        if start is not None:
            model.load_state_dict(start[0][name].state_dict())
            held_out = {"valid_rows": start[1][name].valid_rows, "optimizer_state": start[1][name].optimizer_state}
        # Batch orders are drawn from seed + 500; a continuation's differ from the support run's
        # because it shuffles a different set of rows.
        batch_seed = seed * 1000 + index + 500 * bool(held_out)
        result = pretrain(model, tensors, rows, pretrain_settings(config), seed=batch_seed,
                          device=device, progress=progress, desc=f"{name} ({tag})", **held_out)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir / tag / f"{name}.pt", name, model, result.optimizer_state)
        models[name], results[name] = model, result
    return models, results


def _probabilities(models: dict, tensors: TensorData, rows: np.ndarray, device) -> np.ndarray:
    return np.stack([predict(m, tensors, rows, device=device) for m in models.values()], axis=1)


def _evaluate(rows_out: dict, name: str, users, labels, probabilities) -> None:
    rows_out[name] = summary(users, labels, probabilities)


def run_seed(config: RunConfig, data: EncodedDataset, seed: int, out_dir: Path | None,
             progress: bool = True, log: Callable[[str], None] = print) -> SeedResult:
    result = SeedResult(seed)
    timer = Timer(result.stages, result.peaks, log)
    device = torch.device(config.device)
    torch.manual_seed(seed)
    tensors = TensorData.from_encoded(data)
    split: Split = split_users(data.users, data.timestamps, seed, temporal=config.split == "temporal",
                               new_users=config.new_users)
    result.notes["split"] = {k: int(len(v)) for k, v in split.parts().items()}
    result.notes["dropped_users"] = split.dropped_users
    if split.dropped_users:
        log(f"dropped {split.dropped_users} users with fewer than 4 samples ({split.dropped_samples} samples)")
    test, labels, users = split.test, data.labels[split.test], data.users[split.test]
    checkpoints = out_dir / "checkpoints" / f"seed{seed}" if out_dir else None
    holdout = holdout_rows(split.support, config.validation_fraction, seed)
    result.notes["base_model_validation_rows"] = int(len(holdout))

    if config.meta_pretrain_on == "support":
        # Base models learn on the support rows first (so the query rows stay out-of-sample for
        # the selectors), then continue on all training rows: those continued models are the
        # single-model rows and the models every selector is applied to at test time. They
        # share the support models' parameter basis, so meta-training's change to theta carries
        # over to them.
        with timer("pretrain base models (support rows)"):
            support_models, support_runs = _pretrain_set(config, data, tensors, split.support, seed, device,
                                                         progress, "support", checkpoints, holdout=holdout)
        with timer("continue base models on all training rows"):
            singles, _ = _pretrain_set(config, data, tensors, split.train, seed, device, progress, "train",
                                       checkpoints, start=(support_models, support_runs))
    else:
        with timer("pretrain base models (all training rows)"):
            singles, _ = _pretrain_set(config, data, tensors, split.train, seed, device, progress, "train",
                                       checkpoints, holdout=holdout)
        support_models = singles

    with timer("single models and oracles"):
        single_test = _probabilities(singles, tensors, test, device)
        for k, name in enumerate(singles):
            _evaluate(result.rows, name, users, labels, single_test[:, k])
            result.user_losses[name] = per_user_logloss(users, labels, single_test[:, k])[1]
        _evaluate(result.rows, "Perfect Sample-level Selector", users, labels,
                  oracles.perfect_sample_level(single_test, labels))
        _evaluate(result.rows, "Perfect User-level Selector", users, labels,
                  oracles.perfect_user_level(single_test, labels, users))
        _, best = oracles.best_model_per_user(single_test, labels, users)
        shares = np.bincount(best, minlength=len(singles)) / len(best)
        result.user_proportions = {name: float(shares[k]) for k, name in enumerate(singles)}

    # Selectors learn on support-pretrained models; with `refit` they are applied at test time
    # to the models pretrained on all training rows (the single-model rows' models).
    refit = config.refit_base_models and config.meta_pretrain_on == "support"
    result.notes["refit_base_models"] = refit
    all_rows = np.arange(len(data.labels))
    with timer("sample-level selector"):
        # The paper's protocol: models on 75% (support), classifier on the other 25% (query).
        sample_models = support_models if config.meta_pretrain_on == "support" else _pretrain_set(
            config, data, tensors, split.support, seed, device, progress, "support", checkpoints,
            holdout=holdout)[0]
        base_all = torch.as_tensor(_probabilities(sample_models, tensors, all_rows, device))
        torch.manual_seed(seed)
        sample_selector = Selector(data.layout,
                                   ModelSettings(config.embedding_dim, list(config.sample_selector_hidden)),
                                   len(sample_models), uses_predictions=True)
        result.notes["sample_level"] = fit_sample_selector(
            sample_selector, tensors, split.query, base_all, config.sample_selector_epochs, config.adam_lr,
            config.batch_size, seed, progress)
        test_base = base_all
        if refit:
            test_base = base_all.clone()
            test_base[test] = torch.as_tensor(single_test)
        _evaluate(result.rows, "Sample-level Selector", users, labels,
                  predict_sample_selector(sample_selector, tensors, test, test_base))

    # Meta-training never sees the base models' validation rows: they are the held-out rows on
    # which the test-time setup is checked (meta_stop_on = "held-out-rows").
    all_tasks = tasks_for(data.users, np.setdiff1d(split.support, holdout), split.query)
    rng = np.random.default_rng(seed + 7)
    n_valid = int(round(len(all_tasks) * config.meta_validation_users))
    order = rng.permutation(len(all_tasks))
    valid_tasks = [all_tasks[i] for i in order[:n_valid]]
    train_tasks = [all_tasks[i] for i in order[n_valid:]]
    test_tasks = tasks_for(data.users, split.train, test)  # adapt on all training rows
    test_rows = [t.query for t in test_tasks]
    test_order = np.concatenate(test_rows)
    t_users, t_labels = data.users[test_order], data.labels[test_order]
    new_tasks = tasks_for(data.users, split.new_support, split.new_test) if len(split.new_test) else []
    check_tasks = [t for t in tasks_for(data.users, np.setdiff1d(split.train, holdout), holdout) if len(t.query)]
    if len(check_tasks) > config.meta_check_users:
        keep = np.sort(np.random.default_rng(seed + 13).choice(len(check_tasks), config.meta_check_users,
                                                                replace=False))
        check_tasks = [check_tasks[i] for i in keep]
    check_rows = [t.query for t in check_tasks]
    check_labels = data.labels[np.concatenate(check_rows)] if check_tasks else np.empty(0)

    def test_like_loss(learner: MetaLearner, models: dict) -> float:
        """LogLoss of the test-time setup on held-out rows: the learner's selector and theta change
        carried onto the single models, each checked user adapting on their other training rows."""
        snapshot = learner.state()
        if refit:
            learner.transfer_base_models(models, {k: singles[k] for k in models})
        p = np.concatenate(learner.predict(tensors, check_tasks, check_rows))
        learner.load_state(snapshot)
        return logloss(check_labels, p)

    def run_meta(name: str, models: dict, selector: Selector | None) -> None:
        learner = MetaLearner(Ensemble(clone_models(models), selector), meta_settings(config), device)
        criterion = None
        if config.meta_stop_on == "held-out-rows" and check_tasks:
            def criterion() -> float:
                return test_like_loss(learner, models)
        with timer(f"{name} meta-training"):
            history = learner.fit(tensors, train_tasks, valid_tasks, seed=seed, progress=progress, desc=name,
                                  criterion=criterion)
        result.notes[name] = {"best_epoch": history.best_epoch, "validation_logloss": history.best_validation,
                              "epochs": history.epochs}
        if refit:
            learner.transfer_base_models(models, {k: singles[k] for k in models})
        with timer(f"{name} meta-testing"):
            p = np.concatenate(learner.predict(tensors, test_tasks, test_rows, progress=progress))
        _evaluate(result.rows, name, t_users, t_labels, p)
        result.user_losses[name] = per_user_logloss(t_users, t_labels, p)[1]
        if new_tasks:
            p_new = np.concatenate(learner.predict(tensors, new_tasks, [t.query for t in new_tasks]))
            rows_new = np.concatenate([t.query for t in new_tasks])
            _evaluate(result.new_user_rows, name, data.users[rows_new], data.labels[rows_new], p_new)

    # The best global blend of the (support-pretrained) models, fitted on the meta-training users'
    # query rows (out-of-sample for those models): a baseline row of its own, applied to the single
    # models, and with selector_start = "global-mixture" both user-level selectors' starting point.
    base_meta = base_all if config.meta_pretrain_on == "support" else torch.as_tensor(
        _probabilities(support_models, tensors, all_rows, device))
    query_rows = np.concatenate([t.query for t in train_tasks])
    blend_logits = global_mixture_logits(base_meta[query_rows], tensors.labels[query_rows])
    blend = torch.softmax(blend_logits, 0).numpy().astype(np.float64)
    result.notes["global_blend_weights"] = dict(zip(support_models, blend.tolist(), strict=True))
    _evaluate(result.rows, "Global Blend", users, labels, single_test @ blend)
    start_logits = blend_logits if config.selector_start == "global-mixture" else None

    def new_selector() -> Selector:
        torch.manual_seed(seed)
        selector = Selector(data.layout, ModelSettings(config.embedding_dim, list(config.selector_hidden)),
                            len(support_models), uses_predictions=config.selector_uses_predictions)
        if start_logits is not None:
            start_from_mixture(selector, start_logits)
        return selector

    run_meta("MetaSelector", support_models, new_selector())

    with timer("MetaSelector-Simplified"):
        simple = SimplifiedSelector(new_selector(), base_meta, config.selector_outer_lr, device)
        history = simple.fit(tensors, train_tasks, valid_tasks, config.users_per_episode, config.meta_epochs,
                             config.meta_patience, seed, progress, max_episodes=config.meta_max_episodes)
        if refit:
            simple.base = torch.as_tensor(_probabilities(singles, tensors, all_rows, device)).float()
        result.notes["MetaSelector-Simplified"] = {"best_epoch": history.best_epoch,
                                                   "validation_logloss": history.best_validation}
        p = np.concatenate(simple.predict(tensors, test_tasks, test_rows))
        _evaluate(result.rows, "MetaSelector-Simplified", t_users, t_labels, p)
        if new_tasks:
            rows_new = np.concatenate([t.query for t in new_tasks])
            p_new = np.concatenate(simple.predict(tensors, new_tasks, [t.query for t in new_tasks]))
            _evaluate(result.new_user_rows, "MetaSelector-Simplified", data.users[rows_new],
                      data.labels[rows_new], p_new)

    if config.ablations:
        for name, model in support_models.items():
            run_meta(f"{name} + per-user adaptation", {name: model}, None)

    if new_tasks:
        rows_new = np.concatenate([t.query for t in new_tasks])
        new_probs = _probabilities(singles, tensors, rows_new, device)
        for k, name in enumerate(singles):
            _evaluate(result.new_user_rows, name, data.users[rows_new], data.labels[rows_new], new_probs[:, k])
    return result


def reproduce(config: RunConfig, data: EncodedDataset, out_dir: Path, progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Run every seed, aggregate, and write results.json, report.md, figures, config.toml."""
    from .evaluation.report import aggregate, best_single, figure3, paired_test, write_report

    if config.threads:
        torch.set_num_threads(config.threads)
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    results = [run_seed(config, data, seed, out_dir, progress, log) for seed in range(config.seeds)]
    singles = list(config.models)
    rows = aggregate([r.rows for r in results], singles)
    new_rows = aggregate([r.new_user_rows for r in results], singles) if results[0].new_user_rows else None
    best = best_single(rows, singles)
    first = results[0]
    paired = None
    if "MetaSelector" in first.user_losses and best in first.user_losses:
        paired = {"baseline": best, **paired_test(first.user_losses["MetaSelector"], first.user_losses[best])}
    figures = figure3(first.user_losses, singles, best, out_dir / "figures")
    proportions = {name: float(np.mean([r.user_proportions[name] for r in results])) for name in singles}
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r.stages.items():
            stages[k] = stages.get(k, 0.0) + v
    peaks = {k: max(r.peaks.get(k, 0.0) for r in results) for k in stages}
    wall = time.perf_counter() - start
    stage_table = {k: (v, peaks[k]) for k, v in stages.items()}
    write_report(out_dir, data.name, data.statistics(), rows, new_rows, proportions, paired,
                 list(range(config.seeds)), stage_table, wall, config.to_toml(), figures, __doc__ or "",
                 {f"seed {r.seed}": r.notes for r in results}, per_seed={r.seed: r.rows for r in results})
    return {"rows": rows, "wall_seconds": wall, "stages": stages, "peaks_mb": peaks}
