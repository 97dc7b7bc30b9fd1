"""What each base model brings to a blend, judged on validation rows of the training data.

For each configuration file (laid over the dataset's preset and `--preset`): the split and
base models of `metaselector reproduce` for one seed, then
  - each model's AUC on the meta-training users' query rows (support-row models: rows they never
    trained on), the rows the Global Blend and feature-weighted stacking are fitted on;
  - the Global Blend's weights, fitted there;
  - that blend's LogLoss and feature-weighted stacking's on the held-out training users' query
    rows (the rows stacking's penalty is chosen on), to choose by;
  - for the report only, the single models' and the blend's test AUC.
Test rows are never used to choose; the `validation` columns are the yardstick.

    python -m benchmarks.blend_members --preset extended --threads 2 [--seed 0] [CONFIG.toml ...]
    python -m benchmarks.blend_members --preset extended --threads 2 benchmarks/extended_six_models.toml

The preset's own settings are measured first, then each configuration file's. This is how
RatingMF's place in the set was judged (docs/findings.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from metaselector.config import load_config
from metaselector.data.loading import load_dataset
from metaselector.data.splits import split_users
from metaselector.evaluation.metrics import auc, logloss
from metaselector.experiment.context import Timer, prepare_training
from metaselector.experiment.methods.base import rows_of
from metaselector.experiment.methods.stacking import row_weights
from metaselector.random_streams import int_seed
from metaselector.selection.tasks import tasks_for


def measure(config_file: Path | None, preset: str | None, dataset: str, seed: int) -> dict:
    config = load_config(dataset, config_file, None, preset)
    data = load_dataset(dataset, None, log=lambda m: None)
    torch.manual_seed(int_seed(seed, "dropout"))
    split = split_users(data.users, data.timestamps, seed, temporal=config.split == "temporal",
                        new_users=config.new_users)
    start = time.perf_counter()
    context = prepare_training(config, data, split, seed, Timer(lambda m: None))
    fit_rows, check_rows = rows_of(context.train_tasks), rows_of(context.valid_tasks)
    test_tasks = tasks_for(data.users, split.train, split.test)
    test_rows = rows_of(test_tasks)
    labels = data.labels
    weights = torch.softmax(context.blend_logits.double(), 0).numpy()
    support = context.support_probabilities.double().numpy()
    stacked = (row_weights(context, context.valid_tasks, context.profile_blend).numpy() * support[check_rows]).sum(1)
    singles = context.single_probabilities.double().numpy()
    models = list(config.models)
    return {
        "config": str(config_file) if config_file else f"preset {preset or dataset}",
        "seed": seed,
        "meta_training_query_auc": {m: round(auc(labels[fit_rows], support[fit_rows, k]), 4)
                                    for k, m in enumerate(models)},
        "blend_weights": {m: round(float(w), 3) for m, w in zip(models, weights, strict=True)},
        "validation_blend_logloss": round(logloss(labels[check_rows], support[check_rows] @ weights), 5),
        "validation_stacking_logloss": round(logloss(labels[check_rows], stacked), 5),
        "test_auc": {m: round(auc(labels[test_rows], singles[test_rows, k]), 4) for k, m in enumerate(models)},
        "test_blend_auc": round(auc(labels[test_rows], singles[test_rows] @ weights), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", type=Path, help="TOML files laid over the presets")
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--preset", default="extended")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for config_file in [None, *args.configs]:
        print(json.dumps(measure(config_file, args.preset or None, args.dataset, args.seed)), flush=True)


if __name__ == "__main__":
    main()
