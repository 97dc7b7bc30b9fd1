"""results.json, report.md and Figure 3, aggregated over seeds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from ..io_utils import atomic_write, atomic_write_text, strict
from .fidelity import Fidelity, deviations_section, diagnostics_section, discarded_section, row_label, table_note
from .metrics import relimpr

ORACLES = ("Perfect Sample-level Selector", "Perfect User-level Selector", "Split-half User-level Selector")
ROW_ORDER = ("LR", "FM", "FFM", "DeepFM", *ORACLES, "Sample-level Selector", "Global Blend",
             "MetaSelector (paper)", "MetaSelector (validated)", "MetaSelector-Simplified")


def aggregate(seed_rows: list[dict[str, dict[str, float]]], singles: list[str]) -> dict[str, dict[str, float]]:
    """Means and standard deviations over seeds; RelImpr against the best single model by AUC."""
    first = [n for n in [*singles, *ROW_ORDER] if n in seed_rows[0]]
    names = list(dict.fromkeys(first)) + [n for n in seed_rows[0] if n not in first]
    rows: dict[str, dict[str, float]] = {}
    for name in names:
        aucs = np.array([r[name]["auc"] for r in seed_rows])
        losses = np.array([r[name]["logloss"] for r in seed_rows])
        gaucs = np.array([r[name]["gauc"] for r in seed_rows])
        rows[name] = {"auc": float(aucs.mean()), "logloss": float(losses.mean()), "gauc": float(np.nanmean(gaucs)),
                      "auc_std": float(aucs.std(ddof=1)) if len(aucs) > 1 else 0.0,
                      "logloss_std": float(losses.std(ddof=1)) if len(losses) > 1 else 0.0}
    best = max((rows[n]["auc"] for n in singles if n in rows), default=0.5)
    for values in rows.values():
        values["relimpr"] = relimpr(values["auc"], best)
    return rows


def best_single(rows: dict, singles: list[str]) -> str:
    return max((n for n in singles if n in rows), key=lambda n: rows[n]["auc"])


def paired_test(method_losses: np.ndarray, baseline_losses: np.ndarray) -> dict[str, float]:
    """Wilcoxon signed-rank test on per-user test LogLoss (same users, same order)."""
    difference = method_losses - baseline_losses
    statistic = stats.wilcoxon(method_losses, baseline_losses)
    return {"users": int(len(difference)), "mean_difference": float(difference.mean()),
            "users_better": int((difference < 0).sum()), "p_value": float(statistic.pvalue)}


def figure3(user_losses: dict[str, np.ndarray], singles: list[str], best: str, out_dir: Path,
            selectors: tuple[str, ...] = ("MetaSelector (paper)", "MetaSelector (validated)")) -> list[str]:
    """Kernel density estimates of per-user test LogLoss: (a) the two best single models, (b) the
    paper's MetaSelector (and the validated one beside it) against the best single model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    grid = np.linspace(0, 1.5, 300)
    by_mean = sorted((n for n in singles if n in user_losses), key=lambda n: user_losses[n].mean())
    panels = {"figure3a_single_models.png": by_mean[:2],
              "figure3b_metaselector_vs_best.png": [*selectors, best]}
    written = []
    for filename, names in panels.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name in names:
            losses = user_losses.get(name)
            if losses is None or len(losses) < 3:
                continue
            density = stats.gaussian_kde(np.clip(losses, 0, 3))(grid)
            ax.plot(grid, density, label=f"{name} (mean {losses.mean():.4f}, sd {losses.std():.4f})")
        ax.set_xlabel("per-user test LogLoss")
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_write(out_dir / filename) as handle:
            fig.savefig(handle, format="png", dpi=120)
        plt.close(fig)
        written.append(f"figures/{filename}")
    return written


def _table(rows: dict, with_std: bool) -> str:
    lines = ["| Model | AUC | LogLoss | RelImpr | gAUC |", "|---|---|---|---|---|"]
    for name, v in rows.items():
        label = row_label(f"{name} (oracle)" if name in ORACLES else name, v)
        auc = f"{v['auc']:.4f} ± {v['auc_std']:.4f}" if with_std else f"{v['auc']:.4f}"
        loss = f"{v['logloss']:.5f} ± {v['logloss_std']:.5f}" if with_std else f"{v['logloss']:.5f}"
        lines.append(f"| {label} | {auc} | {loss} | {v['relimpr']:+.2f}% | {v['gauc']:.4f} |")
    return "\n".join(lines)


@dataclass
class RunResult:
    """Everything a reproduce run reports, aggregated over its seeds."""

    dataset: str
    statistics: dict
    rows: dict  # Table 3: method -> metrics (means over seeds)
    new_user_rows: dict | None
    user_proportions: dict  # Table 1
    paired: dict | None  # MetaSelector row -> its paired test against the best single model, per user
    seeds: list[int]
    stages: dict  # stage -> (seconds, peak MB)
    wall_seconds: float
    config_toml: str
    figures: list[str]
    protocol: str
    notes: dict  # per seed: every learner's training notes
    fidelity: Fidelity
    per_seed: dict[int, dict] = field(default_factory=dict)


def write_report(out_dir: Path, run: RunResult) -> None:
    """results.json, config.toml, training_notes.json and report.md, each written atomically."""
    results = {
        "dataset": run.dataset,
        "statistics": {k: run.statistics[k] for k in ("users", "items", "samples", "features")},
        "rows": run.rows,
        "user_proportions": run.user_proportions,
        "seeds": run.seeds,
        "wall_seconds": run.wall_seconds,
        **run.fidelity.results_fields(),
    }
    if run.new_user_rows:
        results["new_user_rows"] = run.new_user_rows
    # Strict JSON: an undefined metric (AUC of test rows with one label class) is null, and the
    # report says why.
    atomic_write_text(out_dir / "results.json", json.dumps(strict(results), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out_dir / "config.toml", run.config_toml)
    atomic_write_text(out_dir / "training_notes.json",
                      json.dumps(strict(run.notes), indent=1, default=str, allow_nan=False) + "\n")
    atomic_write_text(out_dir / "report.md", "\n\n".join(_table_parts(run) + _analysis_parts(run)) + "\n")


def _table_parts(run: RunResult) -> list[str]:
    """Table 2, Table 3 (per seed too) and Table 3 for new users."""
    statistics, rows = run.statistics, run.rows
    parts = [
        f"# MetaSelector reproduction: {run.dataset}",
        f"Seeds: {', '.join(map(str, run.seeds))}. Wall time: {run.wall_seconds:.0f} s.",
        "## Table 2: statistics",
        "| Users | Items | Samples | Features | Positive rate |\n|---|---|---|---|---|\n"
        f"| {statistics['users']:,} | {statistics['items']:,} | {statistics['samples']:,} | "
        f"{statistics['features']:,} | {statistics['positive_rate']:.3f} |",
        "## Table 3: AUC and LogLoss on the test samples (mean ± sd over seeds)",
        "RelImpr is equation (7) against the best single model by AUC. gAUC is the unweighted mean of "
        "per-user AUCs over users whose test samples hold both labels. Rows marked (oracle) choose "
        "with the test labels: they are upper bounds, not methods. " + table_note(),
        _table(rows, len(run.seeds) > 1),
    ]
    undefined = _undefined_metrics(rows)
    if undefined:
        parts.append("Undefined metrics (null in results.json; the test rows of some seed hold one label "
                     "class, or no user has both): " + ", ".join(undefined) + ".")
    if run.per_seed and len(run.per_seed) > 1:
        header = "| Model | " + " | ".join(f"seed {k} AUC" for k in run.per_seed) + " |"
        lines = [header, "|---|" + "---|" * len(run.per_seed)]
        for name in rows:
            lines.append(f"| {name} | " + " | ".join(f"{r[name]['auc']:.4f}" for r in run.per_seed.values()) + " |")
        parts += ["### AUC of each seed", "\n".join(lines)]
    if run.new_user_rows:
        parts += ["## Table 3 for new users (never seen in training)",
                  "Single models know nothing of these users; MetaSelector adapts on their training part.",
                  _table(run.new_user_rows, False)]
    return parts


def _analysis_parts(run: RunResult) -> list[str]:
    """Table 1, the paired test, Figure 3, the protocol, stage times, notes and configuration."""
    shares, paired = run.user_proportions, run.paired
    parts = ["## Table 1: share of users for which each single model has the lowest test LogLoss",
             "| " + " | ".join(shares) + " |\n|" + "---|" * len(shares) + "\n| "
             + " | ".join(f"{v:.2%}" for v in shares.values()) + " |"]
    for name, test in (paired or {}).items():
        parts += [f"## Paired per-user test: {name} against the best single model",
                  f"Wilcoxon signed-rank on per-user test LogLoss ({test['baseline']}), seed {run.seeds[0]}: "
                  f"{test['users']} users, mean difference {test['mean_difference']:+.5f}, "
                  f"{name} lower for {test['users_better']} users, p = {test['p_value']:.3g}."]
    fidelity = run.fidelity
    parts += deviations_section(fidelity) + discarded_section(fidelity, run.seeds) + \
        diagnostics_section(fidelity, run.seeds[0])
    return parts + [
        "## Figure 3: per-user test LogLoss", *[f"![{f}]({f})" for f in run.figures],
        "## Protocol: what each method trained on", run.protocol,
        "## Time per stage (seconds, summed over seeds) and the process's peak memory so far",
        "| stage | seconds | peak MB |\n|---|---|---|\n"
        + "\n".join(f"| {k} | {v:.1f} | {peak:.0f} |" for k, (v, peak) in run.stages.items()),
        "## Training notes",
        "Every learner's history (per epoch: validation LogLoss and what it was measured on), "
        "splits and fitted weights, per seed, are in `training_notes.json`. Best epochs:",
        _best_epochs(run.notes),
        "## Resolved configuration", "```toml\n" + run.config_toml + "```"]


def _undefined_metrics(rows: dict) -> list[str]:
    return [f"{name} {metric}" for name, row in rows.items() for metric, v in row.items()
            if isinstance(v, float) and not np.isfinite(v)]


def _best_epochs(notes: dict) -> str:
    """One line per seed and learner: the epoch kept, its validation LogLoss, and (selectors with
    [meta] selector_rate_scales) the factor on the selector's rates chosen on the same rows."""
    lines = ["| seed | learner | best epoch | validation LogLoss | selector rates x (held-out LogLoss per factor) |",
             "|---|---|---|---|---|"]
    for seed, seed_notes in notes.items():
        for name, value in seed_notes.items():
            if isinstance(value, dict) and "best_epoch" in value:
                loss = value.get("validation_logloss", value.get("validation_cross_entropy", float("nan")))
                rates = value.get("selector_rates")
                choice = (f"{rates['chosen']:g} ({', '.join(f'{k}: {v:.6f}' for k, v in rates['validation'].items())})"
                          if rates else "")
                if rates and rates.get("best", rates["chosen"]) != rates["chosen"]:
                    choice += (f"; x{rates['best']:g} gained {rates['gain']:.5f} ({rates['z']} standard errors), "
                               "too little to keep")
                lines.append(f"| {seed} | {name} | {value['best_epoch']} | {loss:.5f} | {choice} |")
    return "\n".join(lines)
