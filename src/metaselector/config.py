"""Configuration: per-dataset presets (TOML), overrides, and the custom-data column map."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

import tomli_w

from .data.custom import CustomSpec
from .errors import ConfigError
from .selection.meta_settings import MetaSettings
from .settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Interval, Options, build, merge, setting
from .training.pretrain import L2_SCOPES, PretrainSettings


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); expected a TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None


COLUMN_TYPES = {"user": str, "item": str, "timestamp": str, "label": str, "rating": str, "threshold": float,
                "categorical": list, "multi_hot": list, "separator": str}


def read_custom_columns(data_file: Path, columns_file: Path | None) -> CustomSpec:
    """Column map for `custom` data: a TOML [columns] table, or the default names."""
    spec = CustomSpec(path=data_file)
    if columns_file is None:
        return spec
    document = _read_toml(columns_file)
    for key in document:
        if key != "columns":
            raise ConfigError(f"{columns_file}: unknown table or key '{key}' (expected a [columns] table)")
    table = document.get("columns", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{columns_file}: 'columns' must be a table ([columns])")
    for key, value in table.items():
        if key not in COLUMN_TYPES:
            expected = ", ".join(sorted(COLUMN_TYPES))
            raise ConfigError(f"{columns_file}: [columns] key '{key}' unknown (expected one of {expected})")
        kind = COLUMN_TYPES[key]
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{columns_file}: [columns] {key} must be a list of column names, got {value!r}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(f"{columns_file}: [columns] {key} must be a number, got {value!r}")
        elif not isinstance(value, str) or not (value or key in ("label", "rating")):
            raise ConfigError(f"{columns_file}: [columns] {key} must be a non-empty string, got {value!r}")
    # label = "" or rating = "" says there is no such column (TOML has no null)
    spec = replace(spec, **{k: (v if v != "" else None) for k, v in table.items()})
    if spec.label is None and spec.rating is None:
        raise ConfigError(f"{columns_file}: [columns] needs 'label' (0/1) or 'rating' (with 'threshold')")
    named = [spec.user, spec.item, spec.timestamp, *spec.categorical, *spec.multi_hot]
    duplicated = sorted({c for c in named if named.count(c) > 1})
    if duplicated:
        raise ConfigError(f"{columns_file}: [columns] names column '{duplicated[0]}' for two roles")
    return spec


@dataclass
class SampleLevelSettings:
    """The [sample_level] table: the sample-level selector baseline (paper 5.2)."""

    hidden: list[int] = setting([400, 400, 400], AT_LEAST_ONE, non_empty=True)
    epochs: int = setting(20, AT_LEAST_ONE)


@dataclass
class ModelOverrides:
    """A [model_settings.<model>] table: one base model's own settings (chosen by `metaselector
    tune`, or by hand); each one left out falls back to the shared setting of the same name
    (embedding_dim, deepfm_hidden as `hidden`, dropout, and [pretrain] l2_embedding, l2_scope, adam_lr,
    epochs, patience, rating_loss). A table for a model the run does not use is ignored."""

    embedding_dim: int | None = setting(None, AT_LEAST_ONE)
    hidden: list[int] | None = setting(None, AT_LEAST_ONE, non_empty=True)
    dropout: float | None = setting(None, Interval(0, 1, hi_open=True))
    l2_embedding: float | None = setting(None, NON_NEGATIVE)
    l2_scope: str | None = setting(None, Options(L2_SCOPES))
    adam_lr: float | None = setting(None, POSITIVE)
    epochs: int | None = setting(None, AT_LEAST_ONE)
    patience: int | None = setting(None, AT_LEAST_ONE)
    rating_loss: float | None = setting(None, NON_NEGATIVE)


@dataclass
class RunConfig:
    """Every setting a run depends on, defined once; written next to its results.

    Top-level keys are the run and the base models; [pretrain], [meta] and [sample_level]
    tables hold the training stages' settings. Presets and config files hold only what differs.
    """

    dataset: str = setting("ml-latest-small")
    seeds: int = setting(3, AT_LEAST_ONE)
    split: str = setting("random", Options(("random", "temporal")))
    new_users: float = setting(0.0, Interval(0, 1, hi_open=True))
    device: str = setting("cpu", Options(("cpu", "cuda")))
    threads: int = setting(0, NON_NEGATIVE)  # 0: torch's default
    # Base models (paper 5.2): registry names or "module:Class" / "path/to/file.py:Class".
    models: list[str] = setting(["LR", "FM", "FFM", "DeepFM"], non_empty=True)
    embedding_dim: int = setting(10, AT_LEAST_ONE)
    deepfm_hidden: list[int] = setting([256, 256, 256], AT_LEAST_ONE, non_empty=True)
    dropout: float = setting(0.1, Interval(0, 1, hi_open=True))  # 0.1 = keep 0.9
    ablations: bool = setting(True)  # the "<model> + per-user adaptation" rows
    # Serving: each user's most recent events kept by the history store and used to adapt.
    serve_history_length: int = setting(200, AT_LEAST_ONE)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    meta: MetaSettings = field(default_factory=MetaSettings)
    sample_level: SampleLevelSettings = field(default_factory=SampleLevelSettings)
    # Per base model: [model_settings.MF] embedding_dim = 16, ... (a `models` key cannot hold both
    # the list of models and their tables in TOML, hence the name).
    model_settings: dict[str, ModelOverrides] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return _without_none(asdict(self))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, values: dict, where: str = "configuration", classes: dict | None = None,
                  import_models: bool = True) -> RunConfig:
        """Checked settings. Model names are resolved (imported) unless `import_models` is off or
        the name is among `classes` (model classes the caller passes in)."""
        return _checked(build(cls, values, where, moved=MOVED), where, classes or {}, import_models)


# Flat names of earlier versions, so an old config file is told where a setting went.
MOVED = {old: f"[{table}] {new}" for old, (table, new) in {
    "pretrain_epochs": ("pretrain", "epochs"), "batch_size": ("pretrain", "batch_size"),
    "patience": ("pretrain", "patience"), "validation_fraction": ("pretrain", "validation_fraction"),
    "adam_lr": ("pretrain", "adam_lr"), "lazy_table_rows": ("pretrain", "lazy_table_rows"),
    "meta_epochs": ("meta", "epochs"), "meta_patience": ("meta", "patience"),
    "meta_max_episodes": ("meta", "max_episodes"), "users_per_episode": ("meta", "users_per_episode"),
    "inner_steps": ("meta", "inner_steps"), "inner_lr": ("meta", "inner_lr"), "outer_lr": ("meta", "outer_lr"),
    "alpha_outer_lr": ("meta", "alpha_outer_lr"), "selector_hidden": ("meta", "selector_hidden"),
    "meta_stop_on": ("meta", "stop_on"), "meta_pretrain_on": ("meta", "pretrain_on"),
    "selector_start": ("meta", "selector_start"), "meta_check_users": ("meta", "check_users"),
    "sample_selector_epochs": ("sample_level", "epochs"), "sample_selector_hidden": ("sample_level", "hidden"),
}.items()}


def _without_none(value):
    """A settings dict without unset (None) values: TOML has no null."""
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    return value


def _checked(config: RunConfig, where: str, classes: dict, import_models: bool) -> RunConfig:
    """Rules that join several settings or need the model registry."""
    from .models import resolve_model

    if len(set(config.models)) != len(config.models):
        raise ConfigError(f"{where}: setting 'models' names a model twice: {config.models}")
    for name in config.models:
        if import_models and name not in classes:
            resolve_model(name, where=where)
    return config


def _preset_values(dataset: str) -> dict:
    resource = resources.files("metaselector") / "presets" / f"{dataset}.toml"
    return tomllib.loads(resource.read_text()) if resource.is_file() else {}


def preset(dataset: str) -> RunConfig:
    """The paper's hyperparameters for a dataset (presets/<dataset>.toml), else the defaults."""
    return RunConfig.from_dict({**_preset_values(dataset), "dataset": dataset}, where=f"preset {dataset}")


PRESETS = ("extended",)  # presets laid over the dataset's, below a config file


def load_config(dataset: str, config_file: Path | None, overrides: dict | None = None,
                preset_name: str | None = None, base: dict | None = None) -> RunConfig:
    """The dataset's preset (or `base`: a parent model's configuration), then the named preset
    (e.g. "extended"), then the config file's values, then `overrides` (command-line options):
    all checked, before any work."""
    values = {**(base if base is not None else _preset_values(dataset)), "dataset": dataset}
    where = "configuration"
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise ConfigError(f"preset '{preset_name}': unknown (expected one of {', '.join(PRESETS)})")
        values = merge(values, _preset_values(preset_name))
    if config_file is not None:
        values, where = merge(values, _read_toml(config_file)), str(config_file)
    return RunConfig.from_dict(merge(values, overrides or {}), where=where)
