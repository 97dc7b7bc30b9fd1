"""MetaSelector: user-level adaptive model selection for CTR prediction by meta-learning (WWW 2020).

The public API:
    load_data(name, ...)       a dataset, parsed and encoded (the shipped ml-latest-small by default)
    MetaSelector(...)          the estimator: fit, save, load, adapt, predict_proba, score_users
    RunConfig                  every setting, with its range, defined once
    BaseModel, register_model  write your own base model
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.2.0"

# Imported on first use, so `metaselector --help` and bad-input errors do not wait for torch.
_LAZY = {
    "RunConfig": "config", "ConfigError": "errors", "InputError": "errors", "MetaSelectorError": "errors",
    "NotFittedError": "errors", "AdaptedUser": "estimator", "MetaSelector": "estimator", "UserScores": "estimator",
    "BaseModel": "models", "Batch": "models", "ModelSettings": "models", "register_model": "models",
}

if TYPE_CHECKING:
    from .config import RunConfig
    from .errors import ConfigError, InputError, MetaSelectorError, NotFittedError
    from .estimator import AdaptedUser, MetaSelector, UserScores
    from .models import BaseModel, Batch, ModelSettings, register_model


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'metaselector' has no attribute '{name}'")


def load_data(name: str = "ml-latest-small", data_dir: str | Path | None = None,
              data_file: str | Path | None = None, columns_file: str | Path | None = None,
              log: Callable[[str], None] = lambda message: None, grow_from=None):
    """A dataset by name (see `metaselector datasets`), from `data_dir` or the cache (downloaded
    if missing); `name="custom"` reads `data_file` with the column map `columns_file`.
    `grow_from`: a saved model's encoder (`MetaSelector.load(dir).encoder_`), to continue that
    model on this data (`fit(data, init_from=dir)`): its vocabularies are extended, not replaced."""
    from .config import read_custom_columns
    from .data.loading import load_dataset

    custom = read_custom_columns(Path(data_file), Path(columns_file) if columns_file else None) \
        if data_file is not None else None
    return load_dataset(name, Path(data_dir) if data_dir else None, custom=custom, log=log, grow_from=grow_from)


__all__ = ["AdaptedUser", "BaseModel", "Batch", "ConfigError", "InputError", "MetaSelector", "MetaSelectorError",
           "ModelSettings", "NotFittedError", "RunConfig", "UserScores", "load_data", "register_model"]
