"""The saved model: a folder that `MetaSelector.save` writes and `MetaSelector.load` reads.

    manifest.json        format version, package and torch versions, base models and their
                         settings, the resolved configuration, the training data's checksums,
                         validation metrics, and the SHA-256 of each file below
    encoder.json         feature layout, vocabularies, item tags, per-user side columns
    weights.safetensors  theta and phi ("param/<name>"), dense Meta-SGD rates ("alpha/<name>"),
                         row-stored rates of the tables as rows and values
                         ("alpha_rows/<name>", "alpha_values/<name>")

Every file is written atomically and the manifest last, so a crash leaves the previous model
or a folder whose checksums disagree (refused on load). Loading runs no code from the files:
safetensors holds tensors only, and base models are built from the registry or from classes
the caller passes in, never from a name imported because a file says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from .config import RunConfig
from .data.encoder import FeatureEncoder
from .errors import InputError, MetaSelectorError
from .experiment.context import model_settings
from .io_utils import atomic_write, atomic_write_text, sha256_of, strict
from .models import ModelSettings, build_model
from .models.base import MODEL_REGISTRY
from .selection.ensemble import Ensemble
from .selection.metasgd import MetaSGDEnsemble
from .selection.selector import Selector
from .selection.user_profile import FEATURES as PROFILE_FEATURES
from .selection.user_profile import UserProfile

FORMAT_VERSION = 1
FILES = ("encoder.json", "weights.safetensors")


def _package_version() -> str:
    try:
        return version("metaselector")
    except PackageNotFoundError:  # running from a source tree
        return "unknown"


def save_model(model, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "encoder.json", json.dumps(model.encoder_.to_dict()))
    atomic_write_text(directory / "diagnostics.json", json.dumps(strict(model.diagnostics_), indent=1) + "\n")
    with atomic_write(directory / "weights.safetensors") as handle:
        handle.write(save(model.module_.state_dict()))
    notes = model.training_notes_
    manifest = {
        "format_version": FORMAT_VERSION,
        "metaselector_version": _package_version(),
        "torch_version": torch.__version__,
        "dataset": model.dataset_,
        "seed": model.seed_,
        "base_models": model.model_names_,
        "model_settings": {name: model_settings(model.config_, name).__dict__ for name in model.model_names_},
        "config": model.config_.to_dict(),
        "training_data_sha256": model.sources_,
        "validation": {"best_epoch": notes["best_epoch"], "validation_logloss": notes["validation_logloss"]},
        # what the selector does, measured on held-out rows (diagnostics.json holds the details)
        "selector_kind": model.diagnostics_.get("selector_kind", "unknown"),
        # the saved model this one continued (train --init-from), else null
        "parent": getattr(model, "parent_", None),
        # the latest event's time in the training data: a continued model holds out newer events
        "trained_until": getattr(model, "trained_until_", None),
        "files": {name: sha256_of(directory / name) for name in FILES},
    }
    atomic_write_text(directory / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return directory


def read_manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (not a saved MetaSelector model)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable manifest ({err})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format_version"), int):
        raise InputError(f"{path}: field 'format_version' missing or not a number")
    if manifest["format_version"] > FORMAT_VERSION:
        raise InputError(f"{path}: format version {manifest['format_version']} is newer than this package reads "
                         f"({FORMAT_VERSION}): upgrade metaselector")
    for key, kind in (("files", dict), ("config", dict), ("base_models", list), ("seed", int), ("dataset", str)):
        if key not in manifest:
            raise InputError(f"{path}: field '{key}' missing")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise InputError(f"{path}: field '{key}' must be a {kind.__name__}")
    for name in FILES:
        file = directory / name
        if not file.is_file():
            raise InputError(f"{file}: file not found")
        if sha256_of(file) != manifest["files"].get(name):
            raise InputError(f"{file}: SHA-256 does not match manifest.json (truncated or edited)")
    return manifest


def _model_class(name: str, classes: dict, where: Path):
    if name in classes:
        return classes[name]
    if name in MODEL_REGISTRY:
        return MODEL_REGISTRY[name]
    raise InputError(f"{where}: base model '{name}' is not a registered model; pass its class: "
                     f"MetaSelector.load(..., model_classes={{'{name}': YourModel}})")


@dataclass
class ModelView:
    """A saved model without its weights: what a server's HTTP side reads (the columns its events
    declare, the label rule, the history length, the model's id); the scoring process holds the
    weights."""

    manifest_: dict
    config_: RunConfig
    encoder_: FeatureEncoder
    directory_: Path


def load_view(directory: Path, device: str = "cpu") -> ModelView:
    """The manifest (both files' checksums checked), configuration and encoder of a saved model."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    config, encoder = _config_and_encoder(directory, manifest, device)
    return ModelView(manifest, config, encoder, directory)


def _config_and_encoder(directory: Path, manifest: dict, device: str) -> tuple[RunConfig, FeatureEncoder]:
    try:
        config = RunConfig.from_dict({**manifest["config"], "device": device}, where=str(directory / "manifest.json"),
                                     import_models=False)
        encoder = FeatureEncoder.from_dict(json.loads((directory / "encoder.json").read_text()))
    except MetaSelectorError:
        raise
    except Exception as err:  # a crafted or damaged file can fail in many ways; none is a traceback
        raise InputError(f"{directory / 'encoder.json'}: not a valid encoder "
                         f"({err.__class__.__name__}: {err})") from None
    return config, encoder


def load_model(cls, directory: Path, device: str, classes: dict):
    manifest = read_manifest(directory)
    where = directory / "manifest.json"
    config, encoder = _config_and_encoder(directory, manifest, device)
    module = build_module(config, encoder.layout, {name: _model_class(name, classes, where) for name in config.models},
                          device)
    weights = directory / "weights.safetensors"
    try:
        tensors = load(weights.read_bytes())
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{weights}: not a readable safetensors file ({err})") from None
    module.load_state_dict(tensors, where=str(weights))
    # informational fields: an edited value is dropped, not trusted
    sources, validation = manifest.get("training_data_sha256"), manifest.get("validation")
    model = cls(models=list(config.models), config=config, seed=manifest["seed"], device=device)
    model._set_fitted(module, config, encoder, classes, manifest["dataset"], sources if isinstance(sources, dict)
                      else {}, manifest["seed"], validation if isinstance(validation, dict) else {},
                      _informational_diagnostics(directory, manifest))
    model.manifest_, model.directory_ = manifest, directory
    until = manifest.get("trained_until")
    model.trained_until_ = until if isinstance(until, int) and not isinstance(until, bool) else None
    return model


def build_module(config: RunConfig, layout, classes: dict, device: str = "cpu") -> MetaSGDEnsemble:
    """The inference module of a configuration: its base models (of `classes`, name -> class) and
    selector, freshly initialised; no optimizer."""
    models = {name: build_model(name, layout, model_settings(config, name), classes[name]) for name in config.models}
    reads_profile = config.meta.reads_profile
    selector = Selector(layout, ModelSettings(config.embedding_dim, list(config.meta.selector_hidden)),
                        len(models), uses_predictions=config.meta.selector_uses_predictions,
                        profile_features=len(PROFILE_FEATURES) if reads_profile else 0)
    return MetaSGDEnsemble(Ensemble(models, selector), config.meta, device,
                           UserProfile.empty(layout) if reads_profile else None)


def _informational_diagnostics(directory: Path, manifest: dict) -> dict:
    """diagnostics.json as written by `save` (informational: a missing or edited file is no error,
    and the manifest's selector_kind is kept)."""
    try:
        diagnostics = json.loads((directory / "diagnostics.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        diagnostics = {}
    diagnostics = diagnostics if isinstance(diagnostics, dict) else {}
    kind = manifest.get("selector_kind")
    diagnostics["selector_kind"] = kind if kind in ("learned", "global-blend") else "unknown"
    return diagnostics
