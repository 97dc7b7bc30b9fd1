"""`datasets`, `download`, `inspect`, `synth`: the data sets."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .group import cli, custom_options, custom_spec


@cli.command()
def datasets() -> None:
    """List the datasets with their source, size and license."""
    from ..data.registry import DATASETS

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
    from ..data.download import download_dataset
    from ..data.registry import dataset_info
    from ..io_utils import cache_home

    info = dataset_info(name)
    target = data_dir if data_dir is not None else cache_home() / "datasets" / name
    download_dataset(info, Path(target), mirror=mirror, log=lambda m: click.echo(m, err=True), timeout=timeout,
                     deadline_seconds=deadline)
    click.echo(f"{name}: ready in {target}")


@cli.command()
@click.argument("name", default="ml-latest-small")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Folder with the publisher's files (archive or extracted folder).")
@custom_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-cache", is_flag=True, help="Re-encode even if a cached encoding exists.")
def inspect(name: str, data_dir: Path | None, data_file: Path | None, columns_file: Path | None,
            as_json: bool, no_cache: bool) -> None:
    """Table 2 statistics of a dataset: users, items, samples, features."""
    from ..data.loading import load_dataset

    data = load_dataset(name, data_dir, custom=custom_spec(data_file, columns_file),
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
    from ..data.synth import write_synthetic

    summary = write_synthetic(like, out, users=users, seed=seed)
    click.echo(json.dumps(summary))
