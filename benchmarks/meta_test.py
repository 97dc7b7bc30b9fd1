"""Meta-testing throughput: adapt each test user on their support rows, predict their test rows.

Two implementations on the same users, alternated, medians:
  loop     one user at a time: gather the user's rows, one inner step, predict (a Python-level
           pass of every model per user)
  batched  MetaLearner.predict: users padded into chunks, one torch.func.vmap call per chunk

Shapes: Amazon-Electronics-like (320k-feature vocabulary, 6 fields, users with 8 support and 2
test rows) and MovieLens-1M-like (14k features, 10 fields, 100 support and 33 test rows).

    python benchmarks/meta_test.py --threads 2 --rounds 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.meta_episode import build, make_episode  # noqa: E402
from metaselector.models.base import Batch  # noqa: E402
from metaselector.selection.meta import MetaLearner, MetaSettings  # noqa: E402

SHAPES = {"amazon_like": ("vocab_320k", 2000, 8, 2), "movielens_like": ("vocab_14k", 300, 100, 33)}


def loop_predict(learner: MetaLearner, tensors, tasks) -> list[np.ndarray]:
    """The per-user reference: each user's rows gathered, adapted and predicted on their own."""
    out = []
    for task in tasks:
        s_batch, s_labels = tensors.batch(task.support)
        e_batch, _ = tensors.batch(task.query)
        rows = torch.unique(torch.cat([s_batch.ids.flatten(), e_batch.ids.flatten()]))
        leaves, alphas = learner._episode_leaves(rows, train=False)
        params, rates, (s_ids, e_ids) = learner._user_view(rows, leaves, alphas, [s_batch.ids, e_batch.ids])
        with torch.enable_grad():
            params = learner.adapt(params, rates, Batch(s_ids, s_batch.weights), s_labels, False)
        with torch.no_grad():
            out.append(learner.ensemble.probabilities(params, Batch(e_ids, e_batch.weights)).double().numpy())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {}
    for shape, (vocab, users, support, test) in SHAPES.items():
        layout, tensors, tasks = make_episode(vocab, users=users, support=support, query=test)
        learner = MetaLearner(build(layout, vocab), MetaSettings())
        times: dict[str, list[float]] = {"loop": [], "batched": []}
        outputs = {}
        eval_rows = [t.query for t in tasks]
        for _ in range(args.rounds):
            for name in times:
                start = time.perf_counter()
                outputs[name] = loop_predict(learner, tensors, tasks) if name == "loop" else \
                    learner.predict(tensors, tasks, eval_rows)
                times[name].append(time.perf_counter() - start)
        difference = max(float(np.abs(a - b).max()) for a, b in zip(outputs["loop"], outputs["batched"], strict=True))
        loop_ms, batched_ms = (statistics.median(times[k]) * 1000 / users for k in ("loop", "batched"))
        result[shape] = {"users": users, "loop_ms_per_user": loop_ms, "batched_ms_per_user": batched_ms,
                         "speedup": loop_ms / batched_ms, "max_abs_difference": difference}
    if args.json:
        print(json.dumps(result))
        return
    print(f"meta-testing, {args.threads} threads, median of {args.rounds} (ms per user)")
    for shape, r in result.items():
        print(f"  {shape:15s} {r['users']:5d} users  loop {r['loop_ms_per_user']:7.2f}  batched "
              f"{r['batched_ms_per_user']:7.2f}  speedup {r['speedup']:5.1f}x  max |difference| "
              f"{r['max_abs_difference']:.1e}")


if __name__ == "__main__":
    main()
