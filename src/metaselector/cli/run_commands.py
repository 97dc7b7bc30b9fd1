"""`reproduce` and `train`: the experiment, and fitting the model to keep."""

from __future__ import annotations

from pathlib import Path

import click

from .. import distributed
from .group import (
    check_device,
    cli,
    custom_spec,
    dataset_options,
    describe_selector,
    join_ranks,
    names,
    preset_option,
    run_folder_options,
)


@cli.command()
@dataset_options
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Output folder (default runs/<dataset>).")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Number of seeds (0..N-1).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file overriding the dataset preset.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--split", type=click.Choice(["random", "temporal"]), default=None)
@click.option("--new-users", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Fraction of users held out entirely, for meta-testing on new users.")
@click.option("--threads", type=click.IntRange(min=0), default=None, help="torch threads (0: default).")
@click.option("--models", default=None, metavar="NAME,NAME,...",
              help="Base models (default LR,FM,FFM,DeepFM; the extended set adds MF,DIN,RatingMF).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@preset_option
@run_folder_options
def reproduce(dataset, data_dir, data_file, columns_file, out, seeds, config_file, device, split, new_users,
              threads, models, quiet, preset_name, resume, force) -> None:
    """Run Tables 1 and 3 and Figure 3 end to end; write results.json, report.md, figures."""
    from ..config import load_config
    from ..data.loading import load_dataset
    from ..pipeline import reproduce as run

    overrides = {k: v for k, v in {"seeds": seeds, "device": device, "split": split, "new_users": new_users,
                                   "threads": threads, "models": names(models)}.items() if v is not None}
    config = load_config(dataset, config_file, overrides, preset_name)
    check_device(config.device)
    quiet = join_ranks(config.device) or quiet
    out = out or Path("runs") / dataset
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    data = load_dataset(dataset, data_dir, custom=custom_spec(data_file, columns_file), log=log)
    summary = run(config, data, Path(out), progress=not quiet, log=log, resume=resume, force=force)
    if not distributed.current().main:
        return
    for name, row in summary["rows"].items():
        click.echo(f"{name:<36} AUC {row['auc']:.4f}  LogLoss {row['logloss']:.5f}  RelImpr {row['relimpr']:+.2f}%")
    click.echo(f"wrote {out}/results.json, report.md, figures/ in {summary['wall_seconds']:.0f} s")


@cli.command()
@dataset_options
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file overriding the dataset preset.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the saved model.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--threads", type=click.IntRange(min=0), default=None, help="torch threads (0: default).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--init-from", "init_from", type=click.Path(path_type=Path), default=None,
              help="A saved model to continue from on this (newer) data of the same kind: its configuration "
                   "(below --preset and --config), weights and rates; new users, items and values get new rows.")
@click.option("--model-class", "model_class", multiple=True, metavar="MODULE:CLASS|FILE.py:CLASS",
              help="With --init-from: your own base model of the parent, as named when it was trained.")
@preset_option
@run_folder_options
def train(dataset, data_dir, data_file, columns_file, config_file, out, seed, device, threads, quiet, init_from,
          model_class, preset_name, resume, force) -> None:
    """Fit MetaSelector on every user of a dataset and write the saved model to --out."""
    import shutil

    import torch

    from ..config import load_config
    from ..data.loading import load_dataset
    from ..data.splits import require_usable, split_users
    from ..estimator import MetaSelector
    from ..models import resolve_model
    from ..run_folder import RunDirectory, run_identity

    parent = None
    if init_from is not None:
        classes = {name: resolve_model(name, where="--model-class") for name in model_class}
        parent = MetaSelector.load(init_from, model_classes=classes)
    overrides = {k: v for k, v in {"device": device, "threads": threads}.items() if v is not None}
    config = load_config(dataset, config_file, overrides, preset_name,
                         base=parent.config_.to_dict() if parent is not None else None)
    check_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    quiet = join_ranks(config.device) or quiet
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    data = load_dataset(dataset, data_dir, custom=custom_spec(data_file, columns_file), log=log,
                        grow_from=parent.encoder_ if parent is not None else None)
    require_usable(split_users(data.users, data.timestamps, seed, test_fraction=0.0,
                               temporal=config.split == "temporal"), data.labels, data.name)
    identity = run_identity("train", config.to_dict(), data.sources, seed)
    if parent is not None:  # a resume must continue the same parent
        identity["init_from"] = parent.manifest_["files"]
    with RunDirectory(out, identity, resume=resume, force=force) as run:
        model = MetaSelector(config=config, seed=seed, device=config.device).fit(
            data, progress=not quiet, log=log, state_dir=run.state_dir, init_from=parent)
        if not distributed.current().main:
            return
        model.save(out)
        shutil.rmtree(run.state_dir, ignore_errors=True)  # the saved model holds all that is kept
    click.echo(f"wrote {out}/manifest.json and diagnostics.json", err=True)
    if parent is not None:
        click.echo(f"continued from {init_from}: {len(data.encoder.vocabularies['@user'])} users "
                   f"({len(data.encoder.vocabularies['@user']) - len(parent.encoder_.vocabularies['@user'])} new), "
                   f"{len(data.encoder.vocabularies['@item'])} items "
                   f"({len(data.encoder.vocabularies['@item']) - len(parent.encoder_.vocabularies['@item'])} new)",
                   err=True)
    click.echo(describe_selector(model.training_notes_, model.diagnostics_))


@cli.command()
@dataset_options
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file overriding the dataset preset (e.g. an earlier tuned.toml).")
@click.option("--models", default=None, metavar="NAME,NAME,...", help="Base models to tune (default: the run's).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for the studies (studies.sqlite) and the overlay (tuned.toml).")
@click.option("--trials", type=click.IntRange(min=1), default=30, show_default=True,
              help="Finished trials per model, earlier runs' included.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per model for this call.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=None, help="torch threads (0: default).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@preset_option
def tune(dataset, data_dir, data_file, columns_file, config_file, models, out, trials, timeout, seed, threads, quiet,
         preset_name) -> None:
    """Search each base model's settings on validation rows (Optuna); write --out/tuned.toml."""
    import torch

    from ..config import load_config
    from ..data.loading import load_dataset
    from ..tuning import summary_table
    from ..tuning import tune as run

    # --models picks which models to search; each keeps its place in the run's model list.
    overrides = {"threads": threads} if threads is not None else {}
    config = load_config(dataset, config_file, overrides, preset_name)
    if config.threads:
        torch.set_num_threads(config.threads)
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    data = load_dataset(dataset, data_dir, custom=custom_spec(data_file, columns_file), log=log)
    results = run(config, data, Path(out), trials, timeout, seed, progress=not quiet, log=log, only=names(models))
    click.echo(summary_table(results))
    click.echo(f"wrote {Path(out) / 'tuned.toml'} (use it with --config)")
