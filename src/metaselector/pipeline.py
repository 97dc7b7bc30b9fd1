"""`metaselector reproduce`: every row of Table 3, Table 1 and Figure 3, for N seeds.

What each method trains on (all are judged on the same test rows):
  single models            all training rows (support + query), less one validation slice of
                           the support rows (10%, shared by every base model) for early
                           stopping; with meta pretrain_on = "support" (default) each is the
                           support-row model below, trained on, warm, over all training rows
  sample-level selector    base models pretrained on the support rows (75% of training, as
                           the paper); the classifier learns on the query rows (25%)
  Global Blend             one set of weights for all samples, fitted on the meta-training
                           users' query rows with the support-row models, applied to the
                           single models
  MetaSelector (paper)     Algorithm 1 with Meta-SGD and section 5.3's settings: base models
                           pretrained on all training rows (line 3: the single-model rows'
                           models), the mixture's LogLoss for theta and phi, one outer rate
                           beta = alpha / 10 for theta, phi and alpha, a selector on x alone
                           starting from equal weights; episodes on the support/query parts of
                           the meta-training users (the base models' validation slice left out);
                           meta-training stops on the test-time setup's LogLoss over that slice,
                           which no model has trained on (the paper gives no stopping rule)
  MetaSelector-Simplified  the paper row's settings, base models frozen; stops on held-out
                           training users' query LogLoss
  MetaSelector (validated), "<model> + per-user adaptation"   (extensions)
                           [meta] as configured: base models pretrained on the support rows (so
                           the query losses the selector learns from are out-of-sample), each
                           descending its own LogLoss, starting from the "<model> + per-user
                           adaptation" learners (the same learners those rows report); the
                           selector starts from Feature-weighted Stacking's weights (a
                           linear function of the user's profile) and reads the models'
                           predictions and the profile; same episodes and stopping rule as the paper row
  refit (validated rows)   at test time the validated rows and the sample-level selector are
                           applied to the single-model rows' models (the support models
                           continued on all training rows), carrying over the change
                           meta-training made to theta; each test user adapts on all their
                           training rows
  Feature-weighted Stacking  blend weights from the user's profile (selection/user_profile.py:
                           events, positive rate, item popularity, rating mean and spread,
                           days between events), fitted like the Global Blend on the meta-training users' query
                           rows (support models), its L2 strength chosen on held-out users' query
                           rows; applied to the single models
  Per-user adaptation + Global Blend
                           each "<model> + per-user adaptation" learner, mixed by the Global
                           Blend's weights
  Per-user adaptation + Feature-weighted Stacking
                           the same learners mixed by Feature-weighted Stacking's weights
  oracles                  choose with the test labels: upper bounds over the single models,
                           not methods; the split-half user-level oracle chooses each user's
                           model on one half of their test rows and scores the other half
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .config import RunConfig
from .data.dataset import EncodedDataset
from .data.splits import require_usable, split_users
from .evaluation.diagnostics import selector_diagnostics, weights_by_activity_figure
from .evaluation.fidelity import Fidelity
from .evaluation.metrics import per_user_logloss, summary
from .experiment.context import Timer, TrainingContext, prepare_training
from .experiment.methods import Method, table3_methods
from .experiment.methods.base import rows_of
from .experiment.methods.metaselector import PAPER_ROW, VALIDATED_ROW
from .experiment.paper import OPEN_CHOICES, deviations, resolved_meta, structural_notes
from .random_streams import int_seed
from .run_folder import RunDirectory, run_identity
from .selection import oracles
from .selection.tasks import UserTask, tasks_for
from .training.state import StateFile


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
    diagnostics: dict[str, dict] = field(default_factory=dict)  # selector row -> what it does per user


def evaluate_method(method: Method, context: TrainingContext, tasks: list[UserTask]) -> tuple[dict, np.ndarray]:
    """A method's Table 3 metrics on the query rows of `tasks`, and its per-user LogLoss."""
    rows = rows_of(tasks)
    p = np.concatenate(method.predict(context, tasks))
    users, labels = context.data.users[rows], context.data.labels[rows]
    return summary(users, labels, p), per_user_logloss(users, labels, p)[1]


def run_seed(config: RunConfig, data: EncodedDataset, seed: int, state_dir: Path | None = None,
             progress: bool = True, log: Callable[[str], None] = print) -> SeedResult:
    """Split, base models, then every registered method: fit, and evaluate on the test users.
    With `state_dir`, a finished seed's result is kept there and learners resume from it."""
    done = StateFile.named(state_dir, "result")
    if done is not None and (saved := done.load()) is not None:
        log(f"seed {seed}: finished earlier, result read from {done.path}")
        return _seed_result_from(saved)
    result = SeedResult(seed)
    timer = Timer(log, result.stages, result.peaks)
    torch.manual_seed(int_seed(seed, "dropout"))
    split = split_users(data.users, data.timestamps, seed, temporal=config.split == "temporal",
                        new_users=config.new_users)
    require_usable(split, data.labels, data.name)
    result.notes["split"] = {k: int(len(v)) for k, v in split.parts().items()}
    result.notes["dropped_users"] = split.dropped_users
    if split.dropped_users:
        log(f"dropped {split.dropped_users} users with fewer than 4 samples ({split.dropped_samples} samples)")
    context = prepare_training(config, data, split, seed, timer, progress, state_dir=state_dir)
    result.notes.update(context.notes)
    result.notes["refit_base_models"] = context.refit
    test_tasks = tasks_for(data.users, split.train, split.test)  # adapt on all training rows
    new_tasks = tasks_for(data.users, split.new_support, split.new_test) if len(split.new_test) else []
    for method in table3_methods(config):
        notes = method.fit(context)
        if notes:
            result.notes[method.name] = notes
        method.last_weights = None
        result.rows[method.name], losses = evaluate_method(method, context, test_tasks)
        if method.keep_user_losses:
            result.user_losses[method.name] = losses
        if method.last_weights is not None:
            result.diagnostics[method.name] = _diagnose(method, context, test_tasks)
        if new_tasks:
            result.new_user_rows[method.name], _ = evaluate_method(method, context, new_tasks)
    result.user_proportions = _best_model_shares(context, test_tasks)
    if done is not None and distributed.current().main:
        done.save(_seed_result_to(result))
        for learner_state in state_dir.glob("*.pt"):  # the result is all a finished seed needs
            if learner_state != done.path:
                learner_state.unlink()
    return result


def _diagnose(method: Method, context: TrainingContext, tasks: list[UserTask]) -> dict:
    """What `method`'s selector did per test user (its weights from the last predict call)."""
    rows = rows_of(tasks)
    return selector_diagnostics(list(context.config.models), method.last_weights,
                                np.array([len(t.support) for t in tasks]),
                                context.single_probabilities[rows].double().numpy(), context.data.labels[rows],
                                context.seed)


def _seed_result_to(result: SeedResult) -> dict:
    plain = dict(result.__dict__)
    plain["user_losses"] = {k: torch.from_numpy(np.asarray(v)) for k, v in result.user_losses.items()}
    return plain


def _seed_result_from(saved: dict) -> SeedResult:
    saved["user_losses"] = {k: v.numpy() for k, v in saved["user_losses"].items()}
    return SeedResult(**saved)


def _best_model_shares(context: TrainingContext, tasks: list[UserTask]) -> dict[str, float]:
    """Table 1: the share of test users for whom each single model has the lowest LogLoss."""
    rows = rows_of(tasks)
    _, best = oracles.best_model_per_user(context.single_probabilities[rows].double().numpy(),
                                          context.data.labels[rows], context.data.users[rows])
    shares = np.bincount(best, minlength=len(context.config.models)) / len(best)
    return {name: float(shares[k]) for k, name in enumerate(context.config.models)}


def reproduce(config: RunConfig, data: EncodedDataset, out_dir: Path, progress: bool = True,
              log: Callable[[str], None] = print, resume: bool = False, force: bool = False) -> dict:
    """Run every seed, aggregate, and write results.json, report.md, figures, config.toml.
    The folder is claimed for this run (run.json, a lock); `resume` continues it."""
    if config.threads:
        torch.set_num_threads(config.threads)
    # Data that leaves nothing to train on is refused before the output folder is touched.
    require_usable(split_users(data.users, data.timestamps, 0, temporal=config.split == "temporal",
                               new_users=config.new_users), data.labels, data.name)
    identity = run_identity("reproduce", config.to_dict(), data.sources)
    with RunDirectory(out_dir, identity, resume=resume, force=force) as run:
        start = time.perf_counter()
        results = [run_seed(config, data, seed, run.state_dir / f"seed{seed}", progress, log)
                   for seed in range(config.seeds)]
        if not distributed.current().main:
            return {}
        return _report(config, data, out_dir, results, time.perf_counter() - start)


def _report(config: RunConfig, data: EncodedDataset, out_dir: Path, results: list[SeedResult],
            wall: float) -> dict:
    from .evaluation.report import RunResult, aggregate, best_single, figure3, paired_test, write_report

    singles = list(config.models)
    fidelity = _fidelity(config, data, results, out_dir)
    rows = _labelled(aggregate([r.rows for r in results], singles), fidelity.row_info)
    new_rows = _labelled(aggregate([r.new_user_rows for r in results], singles), fidelity.row_info) \
        if results[0].new_user_rows else None
    best = best_single(rows, singles)
    first = results[0]
    paired = {name: {"baseline": best, **paired_test(first.user_losses[name], first.user_losses[best])}
              for name in (PAPER_ROW, VALIDATED_ROW) if name in first.user_losses and best in first.user_losses}
    figures = figure3(first.user_losses, singles, best, out_dir / "figures")
    proportions = {name: float(np.mean([r.user_proportions[name] for r in results])) for name in singles}
    stages: dict[str, float] = {}
    for r in results:
        for k, v in r.stages.items():
            stages[k] = stages.get(k, 0.0) + v
    peaks = {k: max(r.peaks.get(k, 0.0) for r in results) for k in stages}
    stage_table = {k: (v, peaks[k]) for k, v in stages.items()}
    write_report(out_dir, RunResult(
        dataset=data.name, statistics=data.statistics(), rows=rows, new_user_rows=new_rows,
        user_proportions=proportions, paired=paired, seeds=list(range(config.seeds)), stages=stage_table,
        wall_seconds=wall, config_toml=config.to_toml(), figures=figures, protocol=__doc__ or "",
        notes={f"seed {r.seed}": r.notes for r in results}, fidelity=fidelity,
        per_seed={r.seed: r.rows for r in results}))
    return {"rows": rows, "wall_seconds": wall, "stages": stages, "peaks_mb": peaks}


def _labelled(rows: dict, row_info: dict) -> dict:
    """Each row with its variant ("paper" or "extension") and, if meta-trained, its settings and
    best epoch per seed."""
    return {name: {**values, **row_info.get(name, {"variant": "extension"})} for name, values in rows.items()}


def _fidelity(config: RunConfig, data: EncodedDataset, results: list[SeedResult], out_dir: Path) -> Fidelity:
    """How this run relates to the paper: rows' variants, deviations, kept epochs, diagnostics."""
    methods = table3_methods(config)
    row_info = {}
    for method in methods:
        info: dict = {"variant": method.variant}
        if method.settings is not None:
            notes = [r.notes.get(method.name, {}) for r in results]
            info["best_epoch"] = [n.get("best_epoch") for n in notes]
            info["start"] = method.start
            info["settings"] = resolved_meta(method.settings)
            factors = [n.get("selector_rates", {}).get("chosen") for n in notes]
            if any(f is not None for f in factors):  # [meta] selector_rate_scales chose one per seed
                info["selector_rate_factor"] = factors
        row_info[method.name] = info
    selector_rows = {m.name: m.settings for m in methods if m.settings is not None and m.selects}
    fidelity = Fidelity(
        deviations=[d.to_dict() for d in deviations(config, selector_rows)],
        open_choices={k: text for k, (_, text) in OPEN_CHOICES.items()},
        structural=structural_notes(data.layout.num_fields), row_info=row_info,
        diagnostics=results[0].diagnostics)
    if fidelity.diagnostics:
        fidelity.diagnostics_figure = "figures/selector_weights_by_activity.png"
        weights_by_activity_figure(fidelity.diagnostics, out_dir / fidelity.diagnostics_figure)
    return fidelity
