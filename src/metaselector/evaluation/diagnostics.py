"""What a selector does per user: the weights it gives each base model, how much they vary
across users, whether its favourite agrees with the split-half oracle's choice, and how the
weights move with a user's activity (number of training events).

`selector_kind` reads the same numbers: a selector whose weights are the same for every user
and every candidate (within WEIGHT_TOLERANCE) is a global blend, whatever it was trained as.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io_utils import atomic_write
from ..selection.oracles import split_half_choices

# Weights equal to within this (standard deviation across users and across candidates) are one
# global blend: the paper row at its start moves users' mean weights by about 3e-6.
WEIGHT_TOLERANCE = 0.005
# User-activity buckets by number of training events (lower edges).
ACTIVITY_EDGES = (1, 20, 50, 100, 200, 500)


def _bucket_labels() -> list[str]:
    edges = list(ACTIVITY_EDGES)
    return [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]


def selector_diagnostics(models: list[str], weights: list[np.ndarray], activity: np.ndarray,
                         probabilities: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict:
    """Diagnostics of one selector over users. `weights`: one [n_u, K] array per user (the
    adapted selector's weights on their evaluation rows); `activity`: each user's number of
    training events; `probabilities` [rows, K] and `labels`: the single models on the same
    rows, user after user (for the split-half oracle's choice)."""
    keep = [k for k, w in enumerate(weights) if len(w)]
    weights, activity = [weights[k] for k in keep], np.asarray(activity)[keep]
    if not weights:
        return {"models": models, "users": 0, "selector_kind": "unknown"}
    user_mean = np.stack([w.mean(axis=0) for w in weights])  # [users, K]
    every = np.concatenate(weights)
    users = np.repeat(np.arange(len(weights)), [len(w) for w in weights])
    entropy = -(every * np.log(np.clip(every, 1e-12, 1))).sum(axis=1)
    choice = split_half_choices(probabilities, labels, users, seed)
    top = user_mean.argmax(axis=1)
    agreement = np.bincount(users, weights=(choice == top[users]).astype(float)) / np.bincount(users)
    bucket = np.searchsorted(ACTIVITY_EDGES, activity, side="right") - 1
    labels_ = _bucket_labels()
    by_activity = {"buckets": labels_, "users": [int((bucket == b).sum()) for b in range(len(labels_))],
                   "mean_weight": {m: [float(user_mean[bucket == b, k].mean()) if (bucket == b).any() else None
                                       for b in range(len(labels_))] for k, m in enumerate(models)}}
    user_spread = user_mean.std(axis=0)
    sample_spread = every.std(axis=0)
    kind = "global-blend" if max(user_spread.max(), sample_spread.max()) < WEIGHT_TOLERANCE else "learned"
    return {
        "models": models, "users": len(weights), "selector_kind": kind,
        "mean_weight": dict(zip(models, user_mean.mean(axis=0).tolist(), strict=True)),
        "user_weight_spread": dict(zip(models, user_spread.tolist(), strict=True)),
        "candidate_weight_spread": dict(zip(models, sample_spread.tolist(), strict=True)),
        "mean_entropy": float(entropy.mean()), "max_entropy": float(np.log(len(models))),
        "split_half_agreement": float(agreement.mean()),
        "by_activity": by_activity,
    }


def diagnostics_table(rows: dict[str, dict]) -> str:
    """Markdown: one line per (selector row, base model)."""
    lines = ["| row | model | mean weight | spread across users | weight by activity (" +
             ", ".join(next(iter(rows.values()))["by_activity"]["buckets"]) + " events) |", "|---|---|---|---|---|"]
    for name, d in rows.items():
        for m in d["models"]:
            buckets = " / ".join("-" if v is None else f"{v:.3f}" for v in d["by_activity"]["mean_weight"][m])
            lines.append(f"| {name} | {m} | {d['mean_weight'][m]:.3f} | {d['user_weight_spread'][m]:.4f} | "
                         f"{buckets} |")
    summary = ["| row | users | selector kind | mean entropy (max) | agrees with the split-half oracle |",
               "|---|---|---|---|---|"]
    for name, d in rows.items():
        summary.append(f"| {name} | {d['users']} | {d['selector_kind']} | {d['mean_entropy']:.3f} "
                       f"({d['max_entropy']:.3f}) | {d['split_half_agreement']:.1%} |")
    return "\n".join(summary) + "\n\n" + "\n".join(lines)


def weights_by_activity_figure(rows: dict[str, dict], path: Path) -> None:
    """Each base model's mean weight by user-activity bucket, one panel per selector row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(5 * len(rows), 3.6), squeeze=False)
    for ax, (name, d) in zip(axes[0], rows.items(), strict=True):
        buckets = d["by_activity"]["buckets"]
        x = np.arange(len(buckets))
        for m in d["models"]:
            y = [np.nan if v is None else v for v in d["by_activity"]["mean_weight"][m]]
            ax.plot(x, y, marker="o", label=m)
        ax.set_xticks(x, [f"{b}\n({n})" for b, n in zip(buckets, d["by_activity"]["users"], strict=True)],
                      fontsize=7)
        ax.set_xlabel("training events (users)")
        ax.set_ylabel("mean weight")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)
