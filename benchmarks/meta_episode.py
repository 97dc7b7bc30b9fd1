"""One MetaSelector meta-training episode, three implementations, each in a fresh process.

Episode: 10 users, ~100 support and ~33 query samples each; LR, FM, FFM and DeepFM plus
the 200-200-200 selector; one inner step, second order, Meta-SGD (per-parameter alpha),
then the outer Adam step. Vocabularies: MovieLens-1M-like (about 14,000 features, 10
fields) and Amazon-Electronics-like (about 320,000 features, 6 fields).

  ours    this project's MetaTrainer.meta_step (rows a user touches only; lazy row-wise Adam,
          Meta-SGD rates and moments stored only for rows touched)
  dense   metaselector/selection/dense_reference.py: a dense per-user copy of every parameter
  higher  the same episode with the `higher` library (innerloop_ctx, per-parameter lr override)

    pip install -e ".[bench]"
    python -m benchmarks.meta_episode --threads 2 --rounds 3 --episodes 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from metaselector.data.features import FeatureLayout, Field
from metaselector.models import ModelSettings, build_model
from metaselector.selection.ensemble import Ensemble
from metaselector.selection.meta_settings import MetaSettings
from metaselector.selection.meta_trainer import MetaTrainer
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.selector import Selector
from metaselector.selection.tasks import UserTask
from metaselector.training.tensors import TensorData

# (name, vocabulary size, slots); the first field is the user id, the item id is "item".
VOCABS = {
    "vocab_14k": [("user_id", 6040, 1), ("age", 7, 1), ("gender", 2, 1), ("occupation", 21, 1),
                  ("user_history_genre", 18, 6), ("user_history_movie", 3952, 10), ("item", 3952, 1),
                  ("movie_genre", 18, 3), ("day_of_week", 7, 1), ("season", 4, 1)],
    "vocab_320k": [("user_id", 192403, 1), ("item", 63001, 1), ("item_category", 801, 3), ("season", 4, 1),
                   ("user_history_item", 63001, 5), ("user_history_categories", 801, 6)],
}
HIDDEN = {"vocab_14k": [256, 256, 256], "vocab_320k": [400, 400, 400]}


def make_episode(vocab: str, users: int = 10, support: int = 100, query: int = 33, seed: int = 0):
    rng = np.random.default_rng(seed)
    fields, offset, slot = [], 1, 0
    for name, size, slots in VOCABS[vocab]:
        fields.append(Field(name, "categorical" if slots == 1 else "multi-hot", offset, size, slot, slot + slots))
        offset, slot = offset + size, slot + slots
    layout = FeatureLayout(fields, offset)
    n = users * (support + query)
    ids = np.zeros((n, slot), dtype=np.int32)
    owner = np.repeat(np.arange(users), support + query)
    for f in fields:
        if f.name == "user_id":
            ids[:, f.slot_start] = f.offset + rng.choice(f.size, users, replace=False)[owner]
        else:  # items and side features drawn per sample, skewed toward popular ids
            draws = (rng.pareto(1.0, (n, f.slot_stop - f.slot_start)) * f.size / 50).astype(np.int64) % f.size
            ids[:, f.slot_start:f.slot_stop] = f.offset + draws
    weights = np.ones_like(ids, dtype=np.float32)
    for f in fields:
        weights[:, f.slot_start:f.slot_stop] /= f.slot_stop - f.slot_start
    tensors = TensorData(torch.from_numpy(ids), torch.from_numpy(weights),
                         torch.from_numpy(rng.integers(0, 2, n).astype(np.float32)), torch.from_numpy(owner))
    tasks = []
    for u in range(users):
        rows = np.flatnonzero(owner == u)
        tasks.append(UserTask(u, rows[:support], rows[support:]))
    return layout, tensors, tasks


def build(layout, vocab: str, inner_lr: float = 0.001) -> Ensemble:
    torch.manual_seed(0)
    settings = ModelSettings(10, HIDDEN[vocab], 0.1)
    models = {n: build_model(n, layout, settings) for n in ["LR", "FM", "FFM", "DeepFM"]}
    return Ensemble(models, Selector(layout, ModelSettings(10, [200, 200, 200]), 4)).eval()


def run_ours(layout, tensors, tasks, vocab, episodes):
    learner = MetaTrainer(MetaSGDEnsemble(build(layout, vocab), MetaSettings(outer_lr=1e-4)))
    times = []
    for _ in range(episodes + 1):
        start = time.perf_counter()
        learner.meta_step(tensors, tasks)
        times.append(time.perf_counter() - start)
    return times[1:]


def run_dense(layout, tensors, tasks, vocab, episodes):
    from metaselector.selection.dense_reference import dense_episode_backward

    ensemble = build(layout, vocab)
    alpha = {n: torch.full_like(p, 0.001, requires_grad=True) for n, p in ensemble.named_parameters()}
    optimizer = torch.optim.Adam([*ensemble.parameters(), *alpha.values()], lr=1e-4)
    episode = []
    for t in tasks:
        s, sl = tensors.batch(t.support)
        q, ql = tensors.batch(t.query)
        episode.append((tuple(s), sl, tuple(q), ql))
    times = []
    for _ in range(episodes + 1):
        start = time.perf_counter()
        dense_episode_backward(ensemble, alpha, episode)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


def run_higher(layout, tensors, tasks, vocab, episodes):
    import higher

    ensemble = build(layout, vocab)
    params = list(ensemble.parameters())
    alpha = [torch.full_like(p, 0.001, requires_grad=True) for p in params]
    inner = torch.optim.SGD([{"params": [p]} for p in params], lr=1.0)
    outer = torch.optim.Adam([*params, *alpha], lr=1e-4)
    episode = []
    for t in tasks:
        s, sl = tensors.batch(t.support)
        q, ql = tensors.batch(t.query)
        episode.append((s, sl, q, ql))
    bce = torch.nn.functional.binary_cross_entropy
    times = []
    for _ in range(episodes + 1):
        start = time.perf_counter()
        for s, sl, q, ql in episode:
            with higher.innerloop_ctx(ensemble, inner, copy_initial_weights=False,
                                      override={"lr": alpha}) as (fmodel, diffopt):
                diffopt.step(bce(fmodel(s).clamp(1e-7, 1 - 1e-7), sl))
                (bce(fmodel(q).clamp(1e-7, 1 - 1e-7), ql) / len(episode)).backward()
        outer.step()
        outer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times[1:]


def worker(impl: str, vocab: str, episodes: int, threads: int) -> None:
    torch.set_num_threads(threads)
    layout, tensors, tasks = make_episode(vocab)
    # What every implementation carries before its model exists: Python, torch, numpy and the
    # project's modules, the episode's data, and what building a torch optimizer first imports
    # (torch._dynamo, about 70 MB).
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    runtime_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = {"ours": run_ours, "dense": run_dense, "higher": run_higher}[impl](layout, tensors, tasks, vocab, episodes)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # Dense state: parameters x 2 (theta, alpha) x 3 (value, Adam's two moments), float32.
    dense_state_mb = sum(p.numel() for p in build(layout, vocab).parameters()) * 4 * 2 * 3 / 2**20
    print(json.dumps({"ms": [t * 1000 for t in times], "peak_mb": peak_mb, "runtime_mb": runtime_mb,
                      "dense_state_mb": dense_state_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--vocab", choices=list(VOCABS), action="append")
    parser.add_argument("--impl", choices=["ours", "dense", "higher"], action="append")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "VOCAB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.episodes, args.threads)
        return
    vocabs, impls = args.vocab or list(VOCABS), args.impl or ["ours", "dense", "higher"]
    result: dict[str, dict] = {}
    for vocab in vocabs:
        samples: dict[str, list[float]] = {i: [] for i in impls}
        peaks: dict[str, list[float]] = {i: [] for i in impls}
        runtimes: list[float] = []
        dense_state = 0.0
        for _ in range(args.rounds):  # alternate implementations, a fresh process each
            for impl in impls:
                out = subprocess.run([sys.executable, __file__, "--worker", impl, vocab, "--episodes",
                                      str(args.episodes), "--threads", str(args.threads)],
                                     capture_output=True, text=True, check=True)
                data = json.loads(out.stdout.strip().splitlines()[-1])
                samples[impl] += data["ms"]
                peaks[impl].append(data["peak_mb"])
                runtimes.append(data["runtime_mb"])
                dense_state = data["dense_state_mb"]
        runtime = statistics.median(runtimes)
        row = {"dense_state_mb": dense_state, "runtime_mb": runtime}
        for impl in impls:
            row[f"{impl}_ms"] = statistics.median(samples[impl])
            row[f"{impl}_peak_mb"] = statistics.median(peaks[impl])
            row[f"{impl}_above_runtime_mb"] = row[f"{impl}_peak_mb"] - runtime
        for impl in impls:
            if impl != "ours" and "ours" in impls:
                row[f"speedup_vs_{impl}"] = row[f"{impl}_ms"] / row["ours_ms"]
                row[f"memory_ratio_vs_{impl}"] = row["ours_peak_mb"] / row[f"{impl}_peak_mb"]
                row[f"memory_above_runtime_ratio_vs_{impl}"] = \
                    row["ours_above_runtime_mb"] / row[f"{impl}_above_runtime_mb"]
        result[vocab] = row
        if not args.json:
            print(f"{vocab} ({args.threads} threads, median of {args.rounds} processes x {args.episodes} episodes):")
            for impl in impls:
                print(f"  {impl:<7} {row[f'{impl}_ms']:>10.1f} ms/episode   peak {row[f'{impl}_peak_mb']:>8.0f} MB"
                      f"   above runtime {row[f'{impl}_above_runtime_mb']:>8.0f} MB")
            print(f"  (runtime before any model: {runtime:.0f} MB; parameters, Meta-SGD rates and Adam moments"
                  f" held densely: {dense_state:.0f} MB)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
