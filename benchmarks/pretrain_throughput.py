"""One epoch of DeepFM pretraining: this project against DeepCTR-Torch, alternated.

Same data (the shipped ml-latest-small, all samples), same sizes (latent dimension 10,
MLP 256-256-256, dropout 0.1, batch 1000, Adam at 1e-3). DeepCTR-Torch reads each field
as a SparseFeat or a mean-pooled VarLenSparseFeat of the same width. Also reports this
project's FM and FFM throughput (DeepCTR-Torch has no FFM).

    pip install -e ".[bench]"
    python benchmarks/pretrain_throughput.py --threads 2 --rounds 3 [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from metaselector.data.loading import load_dataset
from metaselector.models import ModelSettings, build_model
from metaselector.training.pretrain import PretrainSettings, make_optimizer, train_epoch
from metaselector.training.tensors import TensorData

SETTINGS = PretrainSettings(batch_size=1000, adam_lr=0.001, l2_embedding=0.0)


def ours(data, name: str, seed: int) -> float:
    tensors = TensorData.from_encoded(data)
    torch.manual_seed(seed)
    model = build_model(name, data.layout, ModelSettings(10, [256, 256, 256], 0.1))
    optimizer = make_optimizer(model, SETTINGS)  # what pretraining uses: fused Adam (FTRL for LR)
    rows = np.arange(len(data.labels))
    start = time.perf_counter()
    train_epoch(model, optimizer, tensors, rows, SETTINGS, torch.Generator().manual_seed(seed))
    return len(rows) / (time.perf_counter() - start)


def deepctr_inputs(data):
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat

    columns, inputs = [], {}
    for f in data.layout.fields:
        local = data.ids[:, f.slot_start:f.slot_stop].astype(np.int64) - f.offset + 1
        local[data.ids[:, f.slot_start:f.slot_stop] == 0] = 0
        if f.kind == "categorical":
            columns.append(SparseFeat(f.name, f.size + 1, embedding_dim=10))
            inputs[f.name] = local[:, 0]
        else:
            width = f.slot_stop - f.slot_start
            columns.append(VarLenSparseFeat(SparseFeat(f.name, f.size + 1, embedding_dim=10), maxlen=width,
                                            combiner="mean"))
            inputs[f.name] = local
    return columns, inputs


def deepctr(data, seed: int) -> float:
    from deepctr_torch.models import DeepFM

    columns, inputs = deepctr_inputs(data)
    torch.manual_seed(seed)
    model = DeepFM(columns, columns, dnn_hidden_units=(256, 256, 256), dnn_dropout=0.1, device="cpu", seed=seed)
    model.compile("adam", "binary_crossentropy")
    start = time.perf_counter()
    model.fit(inputs, data.labels.astype(np.float32), batch_size=1000, epochs=1, verbose=0, shuffle=True)
    return len(data.labels) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("ml-latest-small", log=lambda m: None)
    runs: dict[str, list[float]] = {"ours": [], "deepctr": [], "FM": [], "FFM": []}
    for round_index in range(args.rounds):  # alternate, so drift on a shared machine hits both
        runs["ours"].append(ours(data, "DeepFM", round_index))
        runs["deepctr"].append(deepctr(data, round_index))
        runs["FM"].append(ours(data, "FM", round_index))
        runs["FFM"].append(ours(data, "FFM", round_index))
    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {"ours_samples_per_s": med["ours"], "deepctr_samples_per_s": med["deepctr"],
              "ratio": med["ours"] / med["deepctr"], "fm_samples_per_s": med["FM"], "ffm_samples_per_s": med["FFM"],
              "threads": args.threads, "rounds": args.rounds, "samples": int(len(data.labels))}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"DeepFM, one epoch of {result['samples']:,} samples, {args.threads} threads, median of {args.rounds}:")
        print(f"  metaselector   {med['ours']:>10,.0f} samples/s")
        print(f"  DeepCTR-Torch  {med['deepctr']:>10,.0f} samples/s")
        print(f"  ratio          {result['ratio']:.2f}x")
        print(f"  metaselector FM  {med['FM']:>10,.0f} samples/s, FFM {med['FFM']:>10,.0f} samples/s")


if __name__ == "__main__":
    main()
