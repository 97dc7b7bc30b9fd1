"""Checkpoints: weights, optimizer state and feature layout; loading never runs code."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..data.features import FeatureLayout
from ..errors import InputError
from ..io_utils import atomic_write
from .base import MODEL_REGISTRY, BaseModel, ModelSettings


def save_checkpoint(path: Path, name: str, model: BaseModel, optimizer_state: dict | None = None) -> None:
    payload = {
        "model": name,
        "settings": json.dumps(asdict(model.settings)),
        "layout": json.dumps(model.layout.to_dict()),
        "state_dict": model.state_dict(),
        "optimizer": optimizer_state or {},
    }
    with atomic_write(path) as handle:
        torch.save(payload, handle)


def load_checkpoint(path: Path, model_classes: dict[str, type[BaseModel]] | None = None) -> tuple[BaseModel, dict]:
    """Rebuild a model from a checkpoint (weights_only: tensors and plain data only). The model
    class comes from the registry or `model_classes`: a name in the file never imports a module."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise InputError(f"{path}: not a metaselector checkpoint ({err.__class__.__name__})") from None
    layout = FeatureLayout.from_dict(json.loads(payload["layout"]))
    name = payload["model"]
    cls = (model_classes or {}).get(name) or MODEL_REGISTRY.get(name)
    if cls is None:
        raise InputError(f"{path}: model '{name}' is not a registered model; pass model_classes={{'{name}': cls}}")
    model = cls(layout, ModelSettings(**json.loads(payload["settings"])))
    model.load_state_dict(payload["state_dict"])
    return model, payload["optimizer"]
