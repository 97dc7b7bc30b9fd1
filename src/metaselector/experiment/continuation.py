"""Continuing from a saved model on new data of the same kind (`train --init-from`).

The new data is encoded by an encoder grown from the parent's (FeatureEncoder.fit's
`grow_from`: every vocabulary is the union, so every old feature keeps a row), and
`FeatureEncoder.id_map_to` says where each old table row now lives. Then:
  - each base model starts its pretraining from the parent's weights: old table rows moved to
    their new ids, rows of new users, items and values as a fresh model initialises them,
    dense parameters as they are; the starting weights count as epoch 0 of early stopping;
  - meta-training starts its selector and every Meta-SGD rate from the parent's, moved likewise
    (new rows keep the initial rate).
A parameter whose shape differs from the parent's (other model settings) is refused with one line.
The held-out rows (early stopping, the blend, the selector's check) are drawn from events newer
than the parent's data: the parent trained on the older ones, so they would flatter its weights
(with them, a first measurement stopped on FFM alone at weight 1.000 and lost 1.3 AUC points).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..data.encoder import FeatureEncoder
from ..errors import InputError
from ..models import BaseModel
from ..selection.metasgd import MetaSGDEnsemble
from ..training.row_state import RowStore


class ParentModel:
    """A loaded saved model (a fitted MetaSelector) and the map of its feature ids into `encoder`."""

    def __init__(self, model, encoder: FeatureEncoder, directory: Path) -> None:
        self.model, self.directory = model, Path(directory)
        self.id_map = torch.as_tensor(model.encoder_.id_map_to(encoder))
        self.module: MetaSGDEnsemble = model.module_

    def unseen_rows(self, data) -> np.ndarray:
        """Rows of `data` newer than the parent's training data (rows it cannot have trained on):
        where the continued training's held-out rows come from, so that early stopping and the
        blend are judged on rows no model has seen. None of them is refused with one line."""
        until = self.model.trained_until_
        if until is None:
            raise InputError(f"--init-from {self.directory}: the model does not record when its data ends "
                             "(saved by an earlier version); retrain it first")
        rows = np.flatnonzero(data.timestamps > until)
        if not len(rows):
            raise InputError(f"--init-from {self.directory}: the data has no event after the parent's last "
                             f"({until}): nothing new to continue on")
        return rows

    def record(self) -> dict:
        """What the child's manifest says of its parent."""
        manifest = self.directory / "manifest.json"
        return {"path": str(self.directory.resolve()),
                "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
                "dataset": self.model.dataset_, "seed": self.model.seed_,
                "training_data_sha256": dict(self.model.sources_)}

    def check_models(self, names: list[str]) -> None:
        mine = list(self.model.model_names_)
        if list(names) != mine:
            raise InputError(f"--init-from {self.directory}: the parent's base models are {', '.join(mine)}; this "
                             f"run's are {', '.join(names)} (continue with the parent's models)")

    # ---- moving parameters into the grown feature space ----------------------------------
    def _parent_name(self, flat: str, module: MetaSGDEnsemble) -> str | None:
        """`module`'s parameter `flat` as the parent names it (models are keyed by position)."""
        if flat.startswith("selector."):
            return flat if flat in self.module.params else None
        for name, key in module.ensemble.key_of.items():
            prefix = f"models.{key}."
            if flat.startswith(prefix) and name in self.module.ensemble.key_of:
                theirs = f"models.{self.module.ensemble.key_of[name]}.{flat[len(prefix):]}"
                return theirs if theirs in self.module.params else None
        return None

    def _check_shape(self, what: str, old: torch.Size, new: torch.Size, table: bool) -> None:
        """Tables may grow in rows; anything else must match."""
        if tuple(old[1 if table else 0:]) != tuple(new[1 if table else 0:]):
            raise InputError(f"--init-from {self.directory}: parameter '{what}' has shape {tuple(old)} in the "
                             f"parent and {tuple(new)} here (other model settings); continue with the "
                             "parent's settings")

    def _moved(self, what: str, old: torch.Tensor, fresh: torch.Tensor, table: bool) -> torch.Tensor:
        """The parent's `old` in the grown space: table rows moved to their new ids (new rows
        from `fresh`); dense values as they are."""
        self._check_shape(what, old.shape, fresh.shape, table)
        if not table:
            return old.detach().clone().to(fresh)
        out = fresh.detach().clone()
        out[self.id_map.to(out.device)] = old.detach().to(out)
        return out

    @torch.no_grad()
    def start_model(self, name: str, model: BaseModel) -> None:
        """Base model `name` (freshly built in the grown space) set to the parent's weights."""
        key = self.module.ensemble.key_of[name]
        for pname, p in model.named_parameters():
            flat = f"models.{key}.{pname}"
            p.copy_(self._moved(flat, self.module.params[flat], p, pname in model.table_names))

    @torch.no_grad()
    def start_module(self, module: MetaSGDEnsemble) -> None:
        """The selector's weights and every Meta-SGD rate of `module` from the parent's, where
        the parent has that parameter (base models' weights come from their pretraining)."""
        for flat, p in module.params.items():
            theirs = self._parent_name(flat, module)
            if flat.startswith("selector.") and theirs is not None:
                p.copy_(self._moved(flat, self.module.params[theirs], p, flat in module.tables))
        for flat, rate in module.alpha.items():
            theirs = self._parent_name(flat, module)
            if theirs is None:
                continue
            old = self.module.alpha[theirs]
            if isinstance(rate, RowStore) and isinstance(old, RowStore):
                self._check_shape(f"alpha of {flat}", old.shape, rate.shape, table=True)
                rows = torch.nonzero(old.slot).flatten().to(torch.int64)
                rate.write(self.id_map[rows].to(rate.device), old.gather(rows).to(rate.device))
            elif not isinstance(rate, RowStore) and not isinstance(old, RowStore):
                rate.copy_(self._moved(flat, old, rate, table=False))
