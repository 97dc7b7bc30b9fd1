"""Meta-training and pretraining across processes: 1 process x 2 threads against 2 x 1 (torchrun,
gloo on 127.0.0.1), on the synthetic MovieLens-1M-size data, and a projection to 10 million users.

Measured per layout: meta-training episodes per second (10 users an episode, the default models
and settings), DeepFM pretraining samples per second (batches of 1,000), and the bytes each rank
puts into collectives per episode and per pretraining step. From the one-process episode time
and the exchanged sizes, the projection estimates an epoch over 10 million users on 8 and 64
processes (10 users per rank per episode) at several network bandwidths.

    python benchmarks/distributed.py DIR [--episodes 20] [--json]   (DIR from `metaselector synth --like movielens-1m`)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def worker(data_dir: Path, episodes: int, out: Path) -> None:
    from metaselector import distributed
    from metaselector.config import RunConfig
    from metaselector.data.loading import load_dataset
    from metaselector.data.splits import split_users
    from metaselector.experiment.context import model_settings
    from metaselector.models import build_model
    from metaselector.models.base import ModelSettings
    from metaselector.selection.ensemble import Ensemble
    from metaselector.selection.meta_trainer import MetaTrainer
    from metaselector.selection.metasgd import MetaSGDEnsemble
    from metaselector.selection.selector import Selector
    from metaselector.selection.tasks import tasks_for
    from metaselector.training.pretrain import make_optimizer, train_epoch
    from metaselector.training.tensors import TensorData

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    group = distributed.init_from_environment("cpu")
    data = load_dataset("movielens-1m", data_dir, log=lambda m: None)
    config = RunConfig(dataset="movielens-1m")
    tensors = TensorData.from_encoded(data)
    split = split_users(data.users, data.timestamps, 0)
    tasks = tasks_for(data.users, split.support, split.query)
    torch.manual_seed(0)
    models = {n: build_model(n, data.layout, model_settings(config)) for n in config.models}
    selector = Selector(data.layout, ModelSettings(10, [200, 200, 200]), 4, uses_predictions=True)
    learner = MetaSGDEnsemble(Ensemble(models, selector), config.meta)
    trainer = MetaTrainer(learner)
    order = np.random.default_rng(0).permutation(len(tasks))
    m = config.meta.users_per_episode
    trainer.meta_step(tensors, [tasks[i] for i in order[:m]])  # warm-up
    distributed.exchanged["bytes"] = 0
    start = time.perf_counter()
    for e in range(1, episodes + 1):
        trainer.meta_step(tensors, [tasks[i] for i in order[e * m:(e + 1) * m]])
    meta_seconds = time.perf_counter() - start
    meta_bytes = distributed.exchanged["bytes"] / episodes
    rows = torch.unique(torch.cat([tensors.ids[np.concatenate([tasks[i].support, tasks[i].query])].flatten()
                                   for i in order[m:2 * m]]))
    dense_floats = sum(learner.params[n].numel() + learner.alpha[n].numel() for n in learner.dense)
    row_floats = sum(learner.params[n][0].numel() * 2 for n in learner.tables)  # weights and rates

    deepfm = build_model("DeepFM", data.layout, model_settings(config))
    optimizer = make_optimizer(deepfm, config.pretrain)
    sample = np.random.default_rng(0).choice(split.support, 100_000, replace=False)
    distributed.exchanged["bytes"] = 0
    start = time.perf_counter()
    train_epoch(deepfm, optimizer, tensors, sample, config.pretrain, torch.Generator().manual_seed(0))
    pretrain_seconds = time.perf_counter() - start
    steps = -(-len(sample) // config.pretrain.batch_size)
    if group.main:
        out.write_text(json.dumps({
            "processes": group.world, "threads": torch.get_num_threads(),
            "episodes_per_second": episodes / meta_seconds, "episode_seconds": meta_seconds / episodes,
            "bytes_per_episode": meta_bytes, "pretrain_samples_per_second": len(sample) / pretrain_seconds,
            "bytes_per_pretrain_step": distributed.exchanged["bytes"] / steps,
            "rows_per_10_users": int(len(rows)), "row_floats": row_floats, "dense_floats": dense_floats}))
    distributed.leave()


def project(one: dict, users: int = 10_000_000) -> list[dict]:
    """An epoch over `users` users, 10 users per rank per episode, ring all-reduce: compute is one
    process's 10-user episode time; each rank sends 2 (P-1)/P of the gradient buffer (union rows
    x row width + dense parameters and rates, float32) plus the row ids; 50 microseconds of
    latency per collective step."""
    out = []
    for processes in (8, 64):
        episodes = users / (10 * processes)
        union_rows = one["rows_per_10_users"] * processes  # an upper bound: users' rows overlap
        buffer = 4 * (union_rows * one["row_floats"] + one["dense_floats"])
        for gbit in (1, 10, 100):
            send = 2 * (processes - 1) / processes * buffer + 8 * union_rows
            network = send * 8 / (gbit * 1e9) + 4 * 2 * (processes - 1) * 50e-6
            epoch = episodes * (one["episode_seconds"] + network)
            out.append({"processes": processes, "gbit_per_second": gbit, "episodes": int(episodes),
                        "compute_hours": episodes * one["episode_seconds"] / 3600,
                        "network_hours": episodes * network / 3600, "epoch_hours": epoch / 3600,
                        "megabytes_per_episode_per_rank": send / 1e6})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.worker is not None:
        return worker(args.data_dir, args.episodes, args.worker)
    script, results = str(Path(__file__).resolve()), {}
    for name, launcher, threads in (
            ("1x2", [sys.executable], "2"),
            ("2x1", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], "1")):
        out = Path(f"/tmp/metaselector-distributed-{name}.json")
        env = {**os.environ, "OMP_NUM_THREADS": threads}
        subprocess.run([*launcher, script, str(args.data_dir), "--episodes", str(args.episodes), "--worker",
                        str(out)], check=True, env=env)
        results[name] = json.loads(out.read_text())
    results["projection_10m_users"] = project(results["1x2"])
    print(json.dumps(results, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
