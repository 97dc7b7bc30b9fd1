"""A script that tests/test_distributed.py runs twice: as one process, and under torchrun with two.

    python tests/distributed_worker.py meta|pretrain OUT
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py meta OUT

`meta`: three meta-training episodes in float64 (3 users: split 2/1; 1 user: one rank has none;
5 users: 3/2). `pretrain`: three steps of each base model (LR by FTRL, FM with lazy table Adam,
FFM and DeepFM with dense fused Adam; DeepFM with dropout 0.3, whose masks must not depend on
the number of processes; batches of 101 rows split 51/50). Rank 0 writes
every parameter, rate and optimizer moment to OUT; each rank writes its parameters to
OUT.rank<r>, so the test can check that the replicas are equal.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from metaselector import distributed
from metaselector.data.loading import load_dataset
from metaselector.data.splits import split_users
from metaselector.models import ModelSettings, build_model
from metaselector.selection.ensemble import Ensemble
from metaselector.selection.meta_settings import MetaSettings
from metaselector.selection.meta_trainer import MetaTrainer
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.selector import Selector
from metaselector.selection.tasks import tasks_for
from metaselector.training.pretrain import PretrainSettings, make_optimizer, train_epoch
from metaselector.training.row_state import RowStore
from metaselector.training.tensors import TensorData

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _data():
    data = load_dataset("movielens-1m", FIXTURES / "ml-1m", use_cache=False, log=lambda m: None)
    tensors = TensorData.from_encoded(data)
    return data, TensorData(tensors.ids, tensors.weights.double(), tensors.labels.double(), tensors.users)


def _dense(value):
    return value.dense() if isinstance(value, RowStore) else value.detach().clone()


def meta() -> dict:
    data, tensors = _data()
    torch.manual_seed(0)
    settings = ModelSettings(embedding_dim=4, hidden=[8, 8], dropout=0.0, init_std=0.3)
    models = {n: build_model(n, data.layout, settings) for n in ["LR", "FM", "FFM", "DeepFM"]}
    selector = Selector(data.layout, ModelSettings(4, [8]), 4, uses_predictions=True)
    with torch.no_grad():
        selector.deep[-1].weight.normal_(0, 0.3)
    learner = MetaSGDEnsemble(Ensemble(models, selector).double(),
                              MetaSettings(inner_lr=0.05, outer_lr=0.01, selector_outer_lr=0.01, alpha_outer_lr=0.01))
    trainer = MetaTrainer(learner)
    split = split_users(data.users, data.timestamps, seed=0)
    tasks = tasks_for(data.users, split.support, split.query)
    for episode in (tasks[0:3], tasks[3:4], tasks[4:9]):
        trainer.meta_step(tensors, episode)
    out = {f"param/{n}": p.detach().clone() for n, p in learner.params.items()}
    out.update({f"alpha/{n}": _dense(a) for n, a in learner.alpha.items()})
    out.update({f"stored/{n}": torch.nonzero(a.slot).flatten() for n, a in learner.alpha.items()
                if isinstance(a, RowStore)})
    for n, store in trainer.table_optimizer.moments.items():
        out[f"moments/{n}"] = store.dense()
        out[f"moment_rows/{n}"] = torch.nonzero(store.slot).flatten()
    for k, state in enumerate(trainer.dense_optimizer.state.values()):
        out[f"adam/{k}/exp_avg"], out[f"adam/{k}/exp_avg_sq"] = state["exp_avg"], state["exp_avg_sq"]
    return out


def pretrain() -> dict:
    data, tensors = _data()
    rows = np.arange(303)
    out = {}
    for index, name in enumerate(["LR", "FM", "FFM", "DeepFM"]):
        torch.manual_seed(index)
        model = build_model(name, data.layout, ModelSettings(embedding_dim=4, hidden=[8, 8], dropout=0.3)).double()
        settings = PretrainSettings(batch_size=101, lazy_table_rows=1 if name == "FM" else 0)
        optimizer = make_optimizer(model, settings)
        train_epoch(model, optimizer, tensors, rows, settings, torch.Generator().manual_seed(index))
        out.update({f"{name}/{k}": v.detach().clone() for k, v in model.state_dict().items()})
        state = optimizer.state_dict()
        moments = state["lazy"]["moments"] if "lazy" in state else {}
        out.update({f"{name}/lazy/{k}": store.dense() for k, store in moments.items()})
        dense_state = state["dense"]["state"] if "dense" in state else state["state"]
        for k, values in dense_state.items():
            for key, value in values.items():
                if torch.is_tensor(value) and value.numel() > 1:
                    out[f"{name}/opt/{k}/{key}"] = value.clone()
    return out


def main() -> None:
    mode, path = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    group = distributed.init_from_environment("cpu")
    result = {"meta": meta, "pretrain": pretrain}[mode]()
    torch.save({k: v for k, v in result.items() if k.startswith(("param/", "FM/", "LR/", "FFM/", "DeepFM/"))},
               f"{path}.rank{group.rank}")
    if group.main:
        torch.save(result, path)
    distributed.leave()


if __name__ == "__main__":
    main()
