"""Scoring throughput of a saved MetaSelector on ml-latest-small, and the model's load time.

Every user of ml-latest-small sends their 50 latest ratings as history and 100 candidate items
(drawn from the catalogue, timestamped after the history). Two ways, alternated, medians:
  batched     MetaSelector.score_users(all requests): encoded together, adapted in vmapped chunks
  one-by-one  score_users([request]) per user
The model has the default architecture (DeepFM 256-256-256, selector 200-200-200); it is
trained for one epoch per stage only, since its weights do not change the cost of scoring.

    python benchmarks/score.py --threads 2 --rounds 3 [--json] [--model DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import metaselector as ms


def requests_for(data, history: int, candidates: int, seed: int = 0) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    vocab = data.encoder.vocabularies
    events = pd.DataFrame({"user": np.asarray(vocab["@user"])[data.users],
                           "item": np.asarray(vocab["@item"])[data.items],
                           "label": data.labels, "timestamp": data.timestamps})
    rng = np.random.default_rng(seed)
    catalogue = np.asarray(vocab["@item"])
    out = []
    for _, rows in events.groupby("user", sort=False):
        h = rows.tail(history)
        c = pd.DataFrame({"user": h["user"].iloc[0], "item": rng.choice(catalogue, candidates, replace=False),
                          "timestamp": int(h["timestamp"].max()) + 60})
        out.append((h, c))
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--model", type=Path, default=None, help="a saved model (default: train one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = ms.load_data("ml-latest-small")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / "model"
            config = {"pretrain": {"epochs": 1}, "meta": {"epochs": 1, "max_episodes": 20}}
            ms.MetaSelector(config=config).fit(data).save(model_dir)
        load_times = [timed(lambda: ms.MetaSelector.load(model_dir)) for _ in range(args.rounds)]
        model = ms.MetaSelector.load(model_dir)
    requests = requests_for(data, args.history, args.candidates)
    batched, single = [], []
    for _ in range(args.rounds):
        batched.append(timed(lambda: model.score_users(requests)))
        single.append(timed(lambda: [model.score_users([r]) for r in requests]))
    users = len(requests)
    result = {
        "users": users, "history_events": args.history, "candidates": args.candidates, "threads": args.threads,
        "batched_users_per_second": users / statistics.median(batched),
        "one_by_one_users_per_second": users / statistics.median(single),
        "speedup": statistics.median(single) / statistics.median(batched),
        "batched_seconds": batched, "one_by_one_seconds": single,
        "load_seconds_median": statistics.median(load_times),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>28}: {value}")


if __name__ == "__main__":
    main()
