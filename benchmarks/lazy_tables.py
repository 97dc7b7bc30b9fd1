"""Pretraining throughput with dense Adam against lazy (touched-rows-only) table updates, at the
Amazon-Electronics vocabulary (synthetic, 318k features), on the first 30,000 samples.

    metaselector synth --like amazon-electronics --out /tmp/az
    python benchmarks/lazy_tables.py /tmp/az --threads 2 [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from metaselector.data.loading import load_dataset
from metaselector.models import ModelSettings, build_model
from metaselector.training.pretrain import PretrainSettings, make_optimizer, train_epoch
from metaselector.training.tensors import TensorData


def samples_per_second(data, tensors, name: str, lazy_rows: int, rows: np.ndarray) -> float:
    torch.manual_seed(0)
    model = build_model(name, data.layout, ModelSettings(10, [400, 400, 400], 0.1))
    settings = PretrainSettings(lazy_table_rows=lazy_rows)
    optimizer = make_optimizer(model, settings)
    start = time.perf_counter()
    train_epoch(model, optimizer, tensors, rows, settings, torch.Generator().manual_seed(0))
    return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("amazon-electronics", args.data_dir, log=lambda m: None)
    tensors = TensorData.from_encoded(data)
    rows = np.arange(30_000)
    print(f"{data.layout.num_features:,} features, {args.threads} threads, median of {args.rounds} (samples/s)")
    for name in ("FM", "FFM", "DeepFM"):
        dense = statistics.median(samples_per_second(data, tensors, name, 0, rows) for _ in range(args.rounds))
        lazy = statistics.median(samples_per_second(data, tensors, name, 1, rows) for _ in range(args.rounds))
        print(f"  {name:7s} dense Adam {dense:9,.0f}   lazy tables {lazy:9,.0f}   {lazy / dense:5.1f}x")


if __name__ == "__main__":
    main()
