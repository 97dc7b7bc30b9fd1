"""Meta-testing throughput: adapt each test user on their support rows, predict their test rows.

Two implementations on the same users, alternated, medians:
  loop     one user at a time: gather the user's rows, one inner step, predict (a Python-level
           pass of every model per user)
  batched  MetaSGDEnsemble.predict: users padded into groups, one torch.func.vmap call per chunk

Shapes: Amazon-Electronics-like (320k-feature vocabulary, 6 fields, users with 8 support and 2
test rows) and MovieLens-1M-like (14k features, 10 fields, 100 support and 33 test rows).

    python -m benchmarks.meta_test --threads 2 --rounds 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmarks.meta_episode import build, make_episode
from metaselector.selection.meta_settings import MetaSettings
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.user_rows import gather_users

SHAPES = {"amazon_like": ("vocab_320k", 2000, 8, 2), "movielens_like": ("vocab_14k", 300, 100, 33)}


def loop_predict(learner: MetaSGDEnsemble, tensors, tasks) -> list[np.ndarray]:
    """The per-user reference: each user's rows gathered, adapted and predicted on their own."""
    out = []
    for task in tasks:
        users = gather_users(tensors, [task.support], [task.query], learner.vocabulary, learner.device)
        rows, s_batch, s_labels, e_batch, _ = users.user(0)
        params = {n: p.detach()[rows] if n in learner.tables else p.detach() for n, p in learner.params.items()}
        rates = {n: a.gather(rows) if n in learner.tables else a.detach() for n, a in learner.alpha.items()}
        with torch.enable_grad():
            params = learner.adapt(params, rates, s_batch, s_labels, False)
        with torch.no_grad():
            out.append(learner.ensemble.probabilities(params, e_batch).double().numpy())
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
        learner = MetaSGDEnsemble(build(layout, vocab), MetaSettings())
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
