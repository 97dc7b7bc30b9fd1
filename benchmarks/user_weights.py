"""Does a saved model select per user? The spread of each user's mean selector weight, from `score`.

ml-latest-small, 60 users drawn with a seed among those with at least 20 ratings: each one's
last 20% of ratings by time are their "later" events, held out of training. `metaselector train`
(by default `--preset extended`) fits on every other rating; `metaselector score` then adapts
to each of the 60 users' earlier ratings and scores their later events. For each base model,
each user's mean weight over their later events, and the spread (standard deviation) of that
mean across the 60 users; also the later events' AUC, per-user AUC averaged (gAUC) and LogLoss.

    python -m benchmarks.user_weights --threads 2 [--preset extended] [--out runs/user-weights] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from metaselector.data.registry import builtin_ml_latest_small
from metaselector.evaluation.metrics import summary


def _cli(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metaselector", *args], check=True)
    return time.perf_counter() - start


def split_later(ratings: pd.DataFrame, users: int, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(every rating but the chosen users' later ones, those later ratings)."""
    counts = ratings.groupby("userId").size()
    chosen = np.random.default_rng(seed).choice(np.sort(counts[counts >= 20].index.to_numpy()), users, replace=False)
    ordered = ratings.sort_values(["userId", "timestamp", "movieId"], kind="stable")
    rank = ordered.groupby("userId").cumcount()
    size = ordered.userId.map(counts)
    later = ordered.userId.isin(chosen) & (rank >= np.ceil(size * (1 - fraction)))
    return ordered[~later], ordered[later]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="extended", help="'' for the paper's four models")
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0, help="which users; also train's --seed")
    parser.add_argument("--out", type=Path, default=Path("runs/user-weights"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    source = builtin_ml_latest_small()
    ratings = pd.read_csv(source / "ratings.csv")
    kept, later = split_later(ratings, args.users, 0.2, args.seed)
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name in ("movies.csv", "links.csv", "tags.csv", "README.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, data / name)
    kept.to_csv(data / "ratings.csv", index=False)
    history = kept[kept.userId.isin(later.userId.unique())].rename(columns={"userId": "user", "movieId": "item"})
    history.to_csv(args.out / "history.csv", index=False)
    later.rename(columns={"userId": "user", "movieId": "item"})[["user", "item", "timestamp"]].to_csv(
        args.out / "candidates.csv", index=False)
    preset = ["--preset", args.preset] if args.preset else []
    train_seconds = _cli("train", "--dataset", "ml-latest-small", "--data-dir", str(data), *preset,
                         "--out", str(args.out / "model"), "--seed", str(args.seed), "--threads", str(args.threads),
                         "--quiet", "--force")
    score_seconds = _cli("score", "--model", str(args.out / "model"), "--history", str(args.out / "history.csv"),
                         "--candidates", str(args.out / "candidates.csv"), "--out", str(args.out / "scored.csv"))
    scored = pd.read_csv(args.out / "scored.csv")
    weights = [c for c in scored.columns if c.startswith("weight_")]
    per_user = scored.groupby("user")[weights].mean()
    truth = later.rename(columns={"userId": "user", "movieId": "item"})[["user", "item", "timestamp", "rating"]]
    judged = scored.merge(truth, on=["user", "item", "timestamp"], how="inner", validate="one_to_one")
    metrics = summary(judged.user.to_numpy(), judged.rating.ge(4.0).to_numpy().astype(float),
                      judged.probability.to_numpy())
    result = {"users": int(per_user.shape[0]), "later_events": len(scored),
              "train_seconds": round(train_seconds, 1), "score_seconds": round(score_seconds, 1),
              "mean_weight": {c[7:]: round(float(per_user[c].mean()), 4) for c in weights},
              "user_weight_spread": {c[7:]: round(float(per_user[c].std(ddof=0)), 4) for c in weights},
              "later_events_metrics": {k: round(float(v), 5) for k, v in metrics.items()}}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{result['users']} users, {result['later_events']} later events; train {result['train_seconds']} s, "
          f"score {result['score_seconds']} s; later events: {result['later_events_metrics']}")
    print("| model | mean weight | spread of users' mean weight |\n|---|---|---|")
    for name in result["mean_weight"]:
        print(f"| {name} | {result['mean_weight'][name]:.4f} | {result['user_weight_spread'][name]:.4f} |")


if __name__ == "__main__":
    main()
