"""What `train --init-from` costs and gives against training from scratch, on a time split.

ml-latest-small's ratings are cut by time into three parts: the first 80% ("earlier"), the next
10% ("newer"), and the last 10% ("later", judged only). Three `metaselector train` runs:
  parent     on the earlier events
  continued  --init-from the parent, on earlier + newer events
  scratch    from scratch, on earlier + newer events
Both models trained on earlier + newer are judged on the later events, each user adapting on
their earlier + newer events (`MetaSelector.evaluate`); users first seen in the later events are
scored un-adapted by both. Wall time is each `train` command's, loading included.

    python -m benchmarks.init_from --threads 2 [--out runs/init-from] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

import metaselector as ms
from metaselector.data.registry import builtin_ml_latest_small


def _folder(ratings: pd.DataFrame, source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("movies.csv", "links.csv", "tags.csv", "README.txt"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    ratings.to_csv(folder / "ratings.csv", index=False)
    return folder


def _train(data_dir: Path, out: Path, threads: int, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metaselector", "train", "--dataset", "ml-latest-small", "--data-dir",
                    str(data_dir), "--out", str(out), "--threads", str(threads), "--quiet", "--force", *extra],
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/init-from"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    source = builtin_ml_latest_small()
    ratings = pd.read_csv(source / "ratings.csv").sort_values(["timestamp", "userId", "movieId"], kind="stable")
    first, second = int(len(ratings) * 0.8), int(len(ratings) * 0.9)
    earlier = _folder(ratings.iloc[:first], source, args.out / "data-earlier")
    current = _folder(ratings.iloc[:second], source, args.out / "data-current")
    later = ratings.iloc[second:]
    seconds = {"parent": _train(earlier, args.out / "parent", args.threads)}
    seconds["continued"] = _train(current, args.out / "continued", args.threads, "--init-from",
                                  str(args.out / "parent"))
    seconds["scratch"] = _train(current, args.out / "scratch", args.threads)
    history = ratings.iloc[:second].rename(columns={"userId": "user", "movieId": "item"})
    test = later.rename(columns={"userId": "user", "movieId": "item"})
    known_users = set(ratings.iloc[:second].userId)
    result = {"events": {"earlier": first, "newer": second - first, "later": len(later)},
              "later_users": int(later.userId.nunique()),
              "later_users_first_seen_there": int(len(set(later.userId) - known_users)),
              "train_seconds": {k: round(v, 1) for k, v in seconds.items()}}
    for name in ("continued", "scratch"):
        model = ms.MetaSelector.load(args.out / name)
        result[name] = {k: round(float(v), 5) for k, v in model.evaluate(history, test).items()}
        result[name]["selector_kind"] = model.selector_kind_
        result[name]["best_meta_epoch"] = model.training_notes_.get("best_epoch")
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"events: {result['events']}; later users {result['later_users']} "
          f"({result['later_users_first_seen_there']} first seen there)")
    print(f"train seconds: {result['train_seconds']}")
    for name in ("continued", "scratch"):
        print(f"{name:<10} " + "  ".join(f"{k} {v}" for k, v in result[name].items()))


if __name__ == "__main__":
    main()
