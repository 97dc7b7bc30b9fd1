"""The command group and what its commands share: options, the run folder, ranks, devices."""

from __future__ import annotations

from pathlib import Path

import click

from .. import distributed


def custom_options(fn):
    fn = click.option("--data-file", type=click.Path(path_type=Path), default=None,
                      help="Your own CSV or Parquet file (dataset 'custom').")(fn)
    fn = click.option("--columns", "columns_file", type=click.Path(path_type=Path), default=None,
                      help="TOML file describing the columns of --data-file (see docs/using.md).")(fn)
    return fn


def dataset_options(fn):
    """--dataset, --data-dir and the custom-data options (--data-file, --columns)."""
    fn = custom_options(fn)
    fn = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                      help="Folder with the publisher's files; default: the cache (downloaded if missing).")(fn)
    return click.option("--dataset", default="ml-latest-small", show_default=True,
                        help="Dataset name (metaselector datasets).")(fn)


def run_folder_options(fn):
    fn = click.option("--force", is_flag=True,
                      help="Replace a run of another configuration in --out.")(fn)
    fn = click.option("--resume", is_flag=True,
                      help="Continue the run in --out from its last saved epoch.")(fn)
    return fn


def preset_option(fn):
    return click.option("--preset", "preset_name", type=click.Choice(["extended"]), default=None,
                        help="A preset laid over the dataset's (below --config): 'extended' adds MF, DIN and "
                             "RatingMF and runs every model with tuned settings.")(fn)


def custom_spec(data_file: Path | None, columns_file: Path | None):
    if data_file is None:
        return None
    from ..config import read_custom_columns

    return read_custom_columns(data_file, columns_file)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="metaselector")
def cli() -> None:
    """MetaSelector: per-user model selection for CTR prediction by meta-learning."""


def describe_selector(notes: dict, diagnostics: dict) -> str:
    """One line a user can act on: what the saved model's selector does."""
    weights = ", ".join(f"{m} {w:.3f}" for m, w in diagnostics.get("mean_weight", {}).items())
    spread = max(diagnostics.get("user_weight_spread", {0: 0.0}).values())
    epoch = f"best epoch {notes['best_epoch']}, held-out LogLoss {notes['validation_logloss']:.5f}"
    if diagnostics.get("selector_kind") == "global-blend":
        return (f"selector: global blend ({weights}): every user gets the same weights, because meta-training "
                f"did not beat its start on held-out rows ({epoch}); per-user adaptation of the models remains")
    return f"selector: learned per user ({weights}; largest spread across users {spread:.3f}; {epoch})"


def names(text: str | None) -> list[str] | None:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def join_ranks(device: str) -> bool:
    """Join torchrun's process group, if launched by it; True on ranks other than 0 (which
    stay quiet: rank 0 alone logs, shows progress and writes files)."""
    return not distributed.init_from_environment(device).main


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        from ..errors import ConfigError

        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available to torch")
