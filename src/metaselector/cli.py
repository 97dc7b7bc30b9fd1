"""The `metaselector` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import distributed
from .errors import MetaSelectorError


def _custom_options(fn):
    fn = click.option("--data-file", type=click.Path(path_type=Path), default=None,
                      help="Your own CSV or Parquet file (dataset 'custom').")(fn)
    fn = click.option("--columns", "columns_file", type=click.Path(path_type=Path), default=None,
                      help="TOML file describing the columns of --data-file (see README).")(fn)
    return fn


def _run_folder_options(fn):
    fn = click.option("--force", is_flag=True,
                      help="Replace a run of another configuration in --out.")(fn)
    fn = click.option("--resume", is_flag=True,
                      help="Continue the run in --out from its last saved epoch.")(fn)
    return fn


def _custom_spec(data_file: Path | None, columns_file: Path | None):
    if data_file is None:
        return None
    from .config import read_custom_columns

    return read_custom_columns(data_file, columns_file)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="metaselector")
def cli() -> None:
    """MetaSelector: per-user model selection for CTR prediction by meta-learning."""


@cli.command()
def datasets() -> None:
    """List the datasets with their source, size and license."""
    from .data.registry import DATASETS

    for info in DATASETS.values():
        click.echo(f"{info.name}\n  {info.description}\n  source:  {info.source}\n"
                   f"  size:    {info.size}\n  license: {info.license}")


@cli.command()
@click.argument("name")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Download into this folder instead of the cache.")
@click.option("--mirror", default=None, help="Base URL of a mirror that serves the same file names.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Give up after this many seconds without a byte (the partial file is kept for resuming).")
@click.option("--deadline", type=click.FloatRange(min=0, min_open=True), default=6 * 3600.0, show_default=True,
              help="Give up when a file is not complete after this many seconds (kept for resuming).")
def download(name: str, data_dir: Path | None, mirror: str | None, timeout: float, deadline: float) -> None:
    """Download NAME, resume a partial download, verify its checksum, extract it."""
    from .data.download import download_dataset
    from .data.registry import dataset_info
    from .io_utils import cache_home

    info = dataset_info(name)
    target = data_dir if data_dir is not None else cache_home() / "datasets" / name
    download_dataset(info, Path(target), mirror=mirror, log=lambda m: click.echo(m, err=True), timeout=timeout,
                     deadline_seconds=deadline)
    click.echo(f"{name}: ready in {target}")


@cli.command()
@click.argument("name", default="ml-latest-small")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the publisher's files (archive or extracted folder).")
@_custom_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-cache", is_flag=True, help="Re-encode even if a cached encoding exists.")
def inspect(name: str, data_dir: Path | None, data_file: Path | None, columns_file: Path | None,
            as_json: bool, no_cache: bool) -> None:
    """Table 2 statistics of a dataset: users, items, samples, features."""
    from .data.loading import load_dataset

    data = load_dataset(name, data_dir, custom=_custom_spec(data_file, columns_file),
                        use_cache=not no_cache, log=lambda m: click.echo(m, err=True))
    stats = {"dataset": name, **data.statistics()}
    if as_json:
        click.echo(json.dumps(stats))
        return
    for key, value in stats.items():
        click.echo(f"{key:>14}: {value:,}" if isinstance(value, int) else f"{key:>14}: {value}")
    click.echo("fields:")
    for f in data.layout.fields:
        click.echo(f"  {f.name:<26} {f.kind:<12} vocabulary {f.size:>7,}  slots {f.slot_stop - f.slot_start}")


@cli.command()
@click.option("--like", type=click.Choice(["movielens-1m", "amazon-electronics"]), required=True)
@click.option("--users", type=click.IntRange(min=10), default=None,
              help="Number of users (default: the real dataset's).")
@click.option("--seed", type=int, default=0)
@click.option("--out", type=click.Path(path_type=Path), required=True)
def synth(like: str, users: int | None, seed: int, out: Path) -> None:
    """Write a synthetic dataset in the publisher's exact raw format."""
    from .data.synth import write_synthetic

    summary = write_synthetic(like, out, users=users, seed=seed)
    click.echo(json.dumps(summary))


@cli.command()
@click.option("--dataset", default="ml-latest-small", show_default=True, help="Dataset name (metaselector datasets).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the publisher's files; default: the cache (downloaded if missing).")
@_custom_options
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
              help="Base models (default LR,FM,FFM,DeepFM; the extended set adds MF,DIN).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_run_folder_options
def reproduce(dataset, data_dir, data_file, columns_file, out, seeds, config_file, device, split, new_users,
              threads, models, quiet, resume, force) -> None:
    """Run Tables 1 and 3 and Figure 3 end to end; write results.json, report.md, figures."""
    from .config import load_config
    from .data.loading import load_dataset
    from .pipeline import reproduce as run

    overrides = {k: v for k, v in {"seeds": seeds, "device": device, "split": split, "new_users": new_users,
                                   "threads": threads, "models": _names(models)}.items() if v is not None}
    config = load_config(dataset, config_file, overrides)
    _check_device(config.device)
    quiet = _join_ranks(config.device) or quiet
    out = out or Path("runs") / dataset
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    data = load_dataset(dataset, data_dir, custom=_custom_spec(data_file, columns_file), log=log)
    summary = run(config, data, Path(out), progress=not quiet, log=log, resume=resume, force=force)
    if not distributed.current().main:
        return
    for name, row in summary["rows"].items():
        click.echo(f"{name:<36} AUC {row['auc']:.4f}  LogLoss {row['logloss']:.5f}  RelImpr {row['relimpr']:+.2f}%")
    click.echo(f"wrote {out}/results.json, report.md, figures/ in {summary['wall_seconds']:.0f} s")


@cli.command()
@click.option("--dataset", default="ml-latest-small", show_default=True, help="Dataset name (metaselector datasets).")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the publisher's files; default: the cache (downloaded if missing).")
@_custom_options
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="TOML file overriding the dataset preset.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for the saved model.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--threads", type=click.IntRange(min=0), default=None, help="torch threads (0: default).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_run_folder_options
def train(dataset, data_dir, data_file, columns_file, config_file, out, seed, device, threads, quiet, resume,
          force) -> None:
    """Fit MetaSelector on every user of a dataset and write the saved model to --out."""
    import shutil

    import torch

    from .config import load_config
    from .data.loading import load_dataset
    from .data.splits import require_usable, split_users
    from .estimator import MetaSelector
    from .experiment.run_directory import RunDirectory, run_identity

    overrides = {k: v for k, v in {"device": device, "threads": threads}.items() if v is not None}
    config = load_config(dataset, config_file, overrides)
    _check_device(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    quiet = _join_ranks(config.device) or quiet
    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    data = load_dataset(dataset, data_dir, custom=_custom_spec(data_file, columns_file), log=log)
    require_usable(split_users(data.users, data.timestamps, seed, test_fraction=0.0,
                               temporal=config.split == "temporal"), data.labels, data.name)
    identity = run_identity("train", config.to_dict(), data.sources, seed)
    with RunDirectory(out, identity, resume=resume, force=force) as run:
        model = MetaSelector(config=config, seed=seed, device=config.device).fit(
            data, progress=not quiet, log=log, state_dir=run.state_dir)
        if not distributed.current().main:
            return
        model.save(out)
        shutil.rmtree(run.state_dir, ignore_errors=True)  # the saved model holds all that is kept
    click.echo(f"wrote {out}/manifest.json and diagnostics.json", err=True)
    click.echo(describe_selector(model.training_notes_, model.diagnostics_))


@cli.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="A saved model folder.")
@click.option("--history", "history_file", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet: user,item,rating,timestamp (or label instead of rating).")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet: user,item,timestamp.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="CSV or Parquet (by suffix); default: CSV on standard output.")
@click.option("--model-class", "model_class", multiple=True, metavar="MODULE:CLASS|FILE.py:CLASS",
              help="Your own base model, as named when training (a saved model never imports one itself).")
def score(model_dir: Path, history_file: Path, candidates_file: Path, out: Path | None,
          model_class: tuple[str, ...]) -> None:
    """Adapt to each user's history and score their candidates."""
    from .estimator import MetaSelector
    from .models import resolve_model
    from .scoring import read_events, score_frame, write_table

    classes = {name: resolve_model(name, where="--model-class") for name in model_class}
    model = MetaSelector.load(model_dir, model_classes=classes)
    _join_ranks(model.config_.device)
    scored = score_frame(model, read_events(history_file, needs_label=True), read_events(candidates_file))
    if not distributed.current().main:
        return
    if out is None:
        click.echo(scored.to_csv(index=False), nl=False)
    else:
        write_table(scored, out)
        click.echo(f"wrote {len(scored)} scored candidates to {out}", err=True)


@cli.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="A saved model folder.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--history-db", type=click.Path(path_type=Path), default=Path("history.sqlite"), show_default=True,
              help="SQLite file of users' recent events (created if missing).")
@click.option("--history-length", type=click.IntRange(min=1), default=None,
              help="Events kept per user and used to adapt (default: the model's serve_history_length, 200).")
@click.option("--max-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Users adapted together in one call (1: no batching).")
@click.option("--queue-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests that may wait; beyond, 503 with Retry-After.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--max-events", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=1 << 20, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=0, help="torch threads (0: default).")
@click.option("--model-class", "model_class", multiple=True, metavar="MODULE:CLASS|FILE.py:CLASS",
              help="Your own base model, as named when training.")
def serve(model_dir, host, port, history_db, history_length, max_batch, queue_size, max_candidates, max_events,
          max_body_bytes, threads, model_class) -> None:
    """Serve the model over HTTP: adapt to a user's recent history, score candidates (docs at /docs)."""
    import torch
    import uvicorn

    from .estimator import MetaSelector
    from .models import resolve_model
    from .serving import limit_malloc_arenas
    from .serving.app import ServeSettings, create_app
    from .serving.store import SQLiteHistoryStore

    limit_malloc_arenas()
    if threads:
        torch.set_num_threads(threads)
    classes = {name: resolve_model(name, where="--model-class") for name in model_class}
    model = MetaSelector.load(model_dir, model_classes=classes)
    settings = ServeSettings(max_batch=max_batch, queue_size=queue_size, max_candidates=max_candidates,
                             max_events=max_events, max_body_bytes=max_body_bytes,
                             history_length=history_length or model.config_.serve_history_length)
    try:
        store = SQLiteHistoryStore(history_db, keep=settings.history_length)
    except Exception as err:  # sqlite3 raises several types for a path it cannot use
        from .errors import InputError

        raise InputError(f"{history_db}: cannot open the history store ({err})") from None
    app = create_app(model, store, settings)
    click.echo(f"serving {model_dir} on http://{host}:{port} (docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=30)


def describe_selector(notes: dict, diagnostics: dict) -> str:
    """One line a user can act on: what the saved model's selector does."""
    weights = ", ".join(f"{m} {w:.3f}" for m, w in diagnostics.get("mean_weight", {}).items())
    spread = max(diagnostics.get("user_weight_spread", {0: 0.0}).values())
    epoch = f"best epoch {notes['best_epoch']}, held-out LogLoss {notes['validation_logloss']:.5f}"
    if diagnostics.get("selector_kind") == "global-blend":
        return (f"selector: global blend ({weights}): every user gets the same weights, because meta-training "
                f"did not beat its start on held-out rows ({epoch}); per-user adaptation of the models remains")
    return f"selector: learned per user ({weights}; largest spread across users {spread:.3f}; {epoch})"


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def _join_ranks(device: str) -> bool:
    """Join torchrun's process group, if launched by it; True on ranks other than 0 (which
    stay quiet: rank 0 alone logs, shows progress and writes files)."""
    return not distributed.init_from_environment(device).main


def _check_device(device: str) -> None:
    if device == "cuda":
        import torch

        from .errors import ConfigError

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available to torch")


def main(args: list[str] | None = None) -> None:
    try:
        cli.main(args=args, prog_name="metaselector", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except MetaSelectorError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        distributed.leave()


if __name__ == "__main__":
    main()
