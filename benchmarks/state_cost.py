"""What a saved training state costs: the time and bytes of one epoch-boundary save.

Default-size models on ml-latest-small's vocabulary (LR, FM, FFM, DeepFM 256-256-256, selector
200-200-200). Meta-training: the learner after a few episodes (weights, Meta-SGD rates, both
optimizers' moments, the best state so far); pretraining: DeepFM with its Adam state and best
state. Each save is timed against the epoch it follows: one meta-training epoch and one
pretraining epoch of DeepFM, measured here on the same data.

    python benchmarks/state_cost.py --threads 2 --rounds 5 [--json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import metaselector as ms
from metaselector.data.splits import split_users
from metaselector.experiment.context import model_settings
from metaselector.models import build_model
from metaselector.selection.ensemble import Ensemble
from metaselector.selection.meta_trainer import MetaTrainer, _Epochs
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.selector import Selector
from metaselector.selection.tasks import tasks_for
from metaselector.training.pretrain import make_optimizer, train_epoch
from metaselector.training.state import StateFile
from metaselector.training.tensors import TensorData


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = ms.load_data("ml-latest-small")
    config = ms.RunConfig()
    tensors = TensorData.from_encoded(data)
    split = split_users(data.users, data.timestamps, 0)
    tasks = tasks_for(data.users, split.support, split.query)
    models = {n: build_model(n, data.layout, model_settings(config)) for n in config.models}
    selector = Selector(data.layout, ms.ModelSettings(10, [200, 200, 200]), 4, uses_predictions=True)
    learner = MetaSGDEnsemble(Ensemble(models, selector), config.meta)
    epochs = _Epochs(MetaTrainer(learner), tensors, tasks, [], np.random.default_rng(0), False, "", None)
    start = time.perf_counter()
    epoch_loss = epochs.train_epoch(1)["train_query_loss"]
    meta_epoch = time.perf_counter() - start

    deepfm = models["DeepFM"]
    optimizer = make_optimizer(deepfm, config.pretrain)
    start = time.perf_counter()
    train_epoch(deepfm, optimizer, tensors, split.support, config.pretrain, torch.Generator().manual_seed(0))
    pretrain_epoch = time.perf_counter() - start

    meta_state = {"finished": False, "learner": epochs.state_dict(), "stopper": {"best_state": learner.snapshot()}}
    pretrain_state = {"model": deepfm.state_dict(), "optimizer": optimizer.state_dict(),
                      "stopper": {"best_state": copy.deepcopy({"model": deepfm.state_dict(),
                                                               "optimizer": optimizer.state_dict()})}}
    out = {"meta_epoch_seconds": meta_epoch, "meta_epoch_query_loss": epoch_loss,
           "pretrain_epoch_seconds_deepfm": pretrain_epoch}
    with tempfile.TemporaryDirectory() as tmp:
        for name, state in (("meta", meta_state), ("pretrain_deepfm", pretrain_state)):
            file = StateFile(Path(tmp) / f"{name}.pt")
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                file.save(state)
                times.append(time.perf_counter() - start)
            out[f"{name}_save_seconds_median"] = statistics.median(times)
            out[f"{name}_state_mb"] = file.path.stat().st_size / 2**20
    out["meta_save_share_of_epoch"] = out["meta_save_seconds_median"] / meta_epoch
    out["pretrain_save_share_of_epoch"] = out["pretrain_deepfm_save_seconds_median"] / pretrain_epoch
    print(json.dumps(out) if args.json else "\n".join(f"{k:>34}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
