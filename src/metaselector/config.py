"""Configuration: per-dataset presets (TOML), overrides, and the custom-data column map."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path

import tomli_w

from .data.sources import CustomSpec
from .errors import ConfigError


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None


def read_custom_columns(data_file: Path, columns_file: Path | None) -> CustomSpec:
    """Column map for `custom` data: a TOML [columns] table, or the default names."""
    spec = CustomSpec(path=data_file)
    if columns_file is None:
        return spec
    table = _read_toml(columns_file).get("columns", {})
    known = {f.name for f in fields(CustomSpec)} - {"path"}
    for key in table:
        if key not in known:
            expected = ", ".join(sorted(known))
            raise ConfigError(f"{columns_file}: [columns] key '{key}' unknown (expected one of {expected})")
    return replace(spec, **table)


@dataclass
class RunConfig:
    """Everything a reproduce run depends on; written next to its results."""

    dataset: str = "ml-latest-small"
    seeds: int = 3
    split: str = "random"  # or "temporal"
    new_users: float = 0.0
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    # Base models (paper 5.2): latent dimension, DeepFM MLP, dropout (0.1 = keep 0.9).
    models: list[str] = field(default_factory=lambda: ["LR", "FM", "FFM", "DeepFM"])
    embedding_dim: int = 10
    deepfm_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    dropout: float = 0.1
    # Pretraining (paper 5.3): FTRL for LR, Adam for the rest, batch 1000.
    batch_size: int = 1000
    pretrain_epochs: int = 30
    patience: int = 2
    validation_fraction: float = 0.1
    adam_lr: float = 0.001
    l2_embedding: float = 1e-6
    ftrl_alpha: float = 8.0
    ftrl_beta: float = 1.0
    ftrl_l1: float = 0.0
    ftrl_l2: float = 1e-4
    # Models over at least this many features update only the table rows a batch uses (lazy
    # Adam) in pretraining; 0 = never. MovieLens vocabularies stay below it, Amazon's does not.
    lazy_table_rows: int = 100_000
    # Which training data MetaSelector's base models are pretrained on: "support" keeps the
    # query sets out-of-sample for the selector (the single models are then these models
    # trained on, warm, over all training rows); "train" uses all training data.
    meta_pretrain_on: str = "support"
    # With meta_pretrain_on = "support": at test time, every selector (MetaSelector, Simplified,
    # sample-level, per-user adaptation) is applied to the single models (support models continued
    # on all training rows), carrying over the change meta-training made to theta.
    refit_base_models: bool = True
    # Cap on episodes per meta-training epoch (0: every meta-training user once per epoch).
    meta_max_episodes: int = 0
    # MetaSelector (paper 5.3).
    selector_hidden: list[int] = field(default_factory=lambda: [200, 200, 200])
    # "global-mixture": the selector starts from the best single blend of the base models on the
    # meta-training query rows (the Global Blend row); "uniform": from equal weights. With early
    # stopping on the test-time setup, meta-training is kept only where it beats its start, so
    # the start should be the best fixed blend.
    selector_start: str = "global-mixture"
    selector_uses_predictions: bool = True  # chosen by held-out users' query LogLoss
    users_per_episode: int = 10
    inner_steps: int = 1
    inner_lr: float = 0.001  # Meta-SGD alpha initial value
    outer_lr: float = 0.0001  # beta = alpha / 10
    selector_outer_lr: float = 0.001
    # Meta-SGD rates learn faster than theta: 1e-2 won on held-out users' query LogLoss over
    # 1e-4 (= outer_lr, the paper's single beta), 1e-3 and 5e-2. 0 means: the same as outer_lr.
    alpha_outer_lr: float = 0.01
    meta_epochs: int = 8
    meta_patience: int = 2
    first_order: bool = False
    meta_validation_users: float = 0.1
    # What stops meta-training (and picks its best epoch). "held-out-rows": the test-time setup
    # itself on rows no model has trained on: the selector and theta change applied to the
    # single models, each checked user adapting on their other training rows and predicting
    # their rows of the base models' shared validation slice (which meta-training never sees).
    # "held-out-users": the query LogLoss of held-out training users, with the models
    # meta-training uses (the paper's meta-validation).
    meta_stop_on: str = "held-out-rows"
    meta_check_users: int = 2000  # users sampled for "held-out-rows" (each check adapts them all)
    # Sample-level selector (paper 5.2).
    sample_selector_hidden: list[int] = field(default_factory=lambda: [400, 400, 400])
    sample_selector_epochs: int = 20
    ablations: bool = True

    def to_toml(self) -> str:
        return tomli_w.dumps(asdict(self))


def preset(dataset: str) -> RunConfig:
    """The paper's hyperparameters for a dataset (presets/<dataset>.toml), else defaults."""
    config = RunConfig(dataset=dataset)
    resource = resources.files("metaselector") / "presets" / f"{dataset}.toml"
    if resource.is_file():
        config = apply_overrides(config, tomllib.loads(resource.read_text()), source=str(resource))
    return config


def apply_overrides(config: RunConfig, values: dict, source: str) -> RunConfig:
    known = {f.name: f for f in fields(RunConfig)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown setting '{key}'")
        default = getattr(config, key)
        if isinstance(default, bool) != isinstance(value, bool) or (
            isinstance(default, (int, float)) and not isinstance(value, (int, float))
        ) or (isinstance(default, str) and not isinstance(value, str)) or (
            isinstance(default, list) and not isinstance(value, list)
        ):
            raise ConfigError(f"{source}: setting '{key}' must be {type(default).__name__}, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"{source}: setting '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return replace(config, **values)


CHOICES = {
    "split": ("random", "temporal"),
    "device": ("cpu", "cuda"),
    "meta_pretrain_on": ("support", "train"),
    "selector_start": ("uniform", "global-mixture"),
    "meta_stop_on": ("held-out-rows", "held-out-users"),
}


def load_config(dataset: str, config_file: Path | None) -> RunConfig:
    config = preset(dataset)
    if config_file is not None:
        config = apply_overrides(config, _read_toml(config_file), source=str(config_file))
    return config
