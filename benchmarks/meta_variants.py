"""MetaSelector variants compared on validation rows of the training data, never on test.

For each seed: the split and base models of `metaselector reproduce` (pretraining is cached
under --state and reused), then every variant's meta-training. A variant is a set of [meta]
settings laid over the run's. Each variant's choice criterion is what stops its meta-training (and, with
[meta] selector_rate_scales, chooses the selector's rate factor after it): the test-time setup's
LogLoss on the base models' shared validation slice (rows no model has trained on; up to 2,000
users adapting on their other training rows). Every variant is named by
what it sets: "paper" is the paper row's settings (Algorithm 1 with section 5.3's values,
`experiment/paper.py`), "validated" the [meta] table as configured (the project's defaults), and
each --variant is a JSON of [meta] settings laid over the paper's (or, with --variant-base
validated, over the configured ones), named "paper + key=value, ...".
The per-user adaptation learners mixed by the global blend ("adaptation + blend") and by
feature-weighted stacking ("adaptation + stacking") are scored on the same rows, so the
strongest simple alternatives are judged by the same yardstick. Test metrics are printed beside,
for the report only: choose by the `validation` column.

    python benchmarks/meta_variants.py --seeds 0 1 2 --models LR,FM,FFM,DeepFM,MF,DIN \\
        --variant '{"model_loss": "own"}' --threads 2 --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from metaselector.config import load_config
from metaselector.data.loading import load_dataset
from metaselector.data.splits import split_users
from metaselector.evaluation.metrics import logloss, summary
from metaselector.experiment.context import Timer, prepare_training
from metaselector.experiment.meta_training import meta_train
from metaselector.experiment.methods.metaselector import AdaptationThenBlend, AdaptationThenStacking
from metaselector.experiment.paper import paper_meta, resolved_meta
from metaselector.selection.tasks import tasks_for
from metaselector.settings import build


def rows_of(tasks) -> np.ndarray:
    return np.concatenate([t.query for t in tasks])


def scored(context, predictions, tasks) -> dict:
    rows = rows_of(tasks)
    p = np.concatenate(predictions)
    return summary(context.data.users[rows], context.data.labels[rows], p)


def adaptation_blend(context, test_tasks, method) -> dict:
    """Every base model meta-trained alone, adapted per user, mixed by the global blend or by
    feature-weighted stacking (the Table 3 rows): its LogLoss on the same held-out rows the
    variants stop on, and its test metrics."""
    method.fit(context)
    check = context.check_tasks
    validation = np.concatenate(method.predict(context, check))
    return {"validation": logloss(context.data.labels[rows_of(check)], validation),
            **scored(context, method.predict(context, test_tasks), test_tasks)}


def named_variants(meta, overlays: list[dict], defaults: list[str], base: str = "paper") -> list[tuple[str, object]]:
    """(name, [meta] settings): the paper's and the configured ("validated") ones (those named in
    `defaults`), then each overlay laid over the `base` ones, named by what it sets."""
    known = {"paper": paper_meta(meta), "validated": meta}
    out = [(name, known[name]) for name in defaults]
    for overlay in overlays:
        name = f"{base} + " + ", ".join(f"{k}={v}" for k, v in sorted(overlay.items()))
        out.append((name, build(type(meta), {**known[base].__dict__, **overlay}, f"variant {name}")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ml-latest-small")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--models", default="LR,FM,FFM,DeepFM")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variant", action="append", default=[],
                        help="JSON of [meta] settings laid over the paper's (or --variant-base's; repeatable)")
    parser.add_argument("--variant-base", choices=["paper", "validated"], default="paper")
    parser.add_argument("--defaults", nargs="*", choices=["paper", "validated"], default=["paper", "validated"],
                        help="which of the two named variants to run")
    parser.add_argument("--no-defaults", action="store_true", help="skip the paper and validated variants")
    parser.add_argument("--preset", default=None, help="a named preset over the dataset's (e.g. extended)")
    parser.add_argument("--base-meta", default="{}", help="JSON of [meta] settings for every learner")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the adaptation + blend and adaptation + stacking rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--state", type=Path, default=Path("/tmp/metaselector-variants"))
    parser.add_argument("--json", type=Path, help="append one JSON line per result")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base_meta = json.loads(args.base_meta)
    config = load_config(args.dataset, None, {"models": args.models.split(","), "meta": base_meta}, args.preset)
    variants = named_variants(config.meta, [json.loads(v) for v in args.variant],
                              [] if args.no_defaults else args.defaults, args.variant_base)
    data = load_dataset(args.dataset, args.data_dir, log=lambda m: None)
    for seed in args.seeds:
        split = split_users(data.users, data.timestamps, seed, temporal=config.split == "temporal")
        tag = "".join(f"-{k}={v}" for k, v in sorted(base_meta.items())) + (f"-{args.preset}" if args.preset else "")
        state = args.state / f"{args.dataset}-{'-'.join(config.models)}{tag}" / f"seed{seed}"
        context = prepare_training(config, data, split, seed, Timer(lambda m: None), state_dir=state)
        test_tasks = tasks_for(data.users, split.train, split.test)
        test_rows = rows_of(test_tasks)
        singles = {name: summary(data.users[test_rows], data.labels[test_rows],
                                 context.single_probabilities[test_rows][:, k].double().numpy())
                   for k, name in enumerate(config.models)}
        def report(result: dict) -> None:
            line = json.dumps(result)
            print(line, flush=True)
            if args.json:
                with open(args.json, "a") as handle:
                    handle.write(line + "\n")

        for name, m in singles.items():
            report({"seed": seed, "method": f"single {name}", **m})
        if not args.no_baseline:
            for label, method in (("adaptation + blend", AdaptationThenBlend()),
                                  ("adaptation + stacking", AdaptationThenStacking())):
                start = time.perf_counter()
                report({"seed": seed, "method": label, **adaptation_blend(context, test_tasks, method),
                        "seconds": time.perf_counter() - start})
        for name, meta in variants:
            start = time.perf_counter()
            learner, notes = meta_train(context, f"MetaSelector {name}", meta, list(config.models))
            test = scored(context, learner.predict(context.tensors, test_tasks, [t.query for t in test_tasks]),
                          test_tasks)
            # with [meta] selector_rate_scales the last choice is the selector's rate factor,
            # judged on the same rows: its LogLoss is the variant's
            rates = notes.get("selector_rates")
            validation = rates["validation"][f"{rates['chosen']:g}"] if rates else notes["validation_logloss"]
            report({"seed": seed, "method": f"MetaSelector {name}", "settings": resolved_meta(meta),
                    "validation": validation, "best_epoch": notes["best_epoch"],
                    "selector_rate_factor": rates["chosen"] if rates else None, **test,
                    "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    main()
