"""`train --init-from`: continuing a saved model on newer data of the same kind; vocabularies
grow, old rows keep their weights and rates, the manifest names the parent, other layouts and
settings are refused with one line."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import metaselector as ms
from metaselector.experiment.continuation import ParentModel
from metaselector.models import ModelSettings, build_model
from metaselector.models.base import MODEL_REGISTRY
from metaselector.saved_model import build_module
from metaselector.training.row_state import RowStore

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = "embedding_dim = 4\ndeepfm_hidden = [8]\n[pretrain]\nepochs = 1\nbatch_size = 256\n" \
       "[meta]\nepochs = 1\nselector_hidden = [8]\n"
NEW_USER = "30"  # has no event in the earlier data


def _ratings() -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "ml-1m" / "ratings.dat", sep="::", engine="python", header=None,
                       names=["user", "item", "rating", "timestamp"], dtype=str)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory) -> Path:
    """The MovieLens-1M fixture's first 80% of events (by time), without one user."""
    folder = tmp_path_factory.mktemp("earlier") / "ml-1m"
    shutil.copytree(FIXTURES / "ml-1m", folder)
    ratings = _ratings()
    cut = ratings.timestamp.astype(int).quantile(0.8)
    kept = ratings[(ratings.timestamp.astype(int) <= cut) & (ratings.user != NEW_USER)]
    (folder / "ratings.dat").write_text("".join("::".join(row) + "\n" for row in kept.itertuples(index=False)))
    return folder


def _train(tmp_path, data_dir, out, *extra):
    (tmp_path / "tiny.toml").write_text(TINY)
    return subprocess.run([sys.executable, "-m", "metaselector", "train", "--dataset", "movielens-1m", "--data-dir",
                           str(data_dir), "--out", str(out), "--quiet", "--threads", "1", *extra],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def parent_dir(earlier, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("parent")
    out = tmp / "model"
    result = _train(tmp, earlier, out, "--config", str(tmp / "tiny.toml"))
    assert result.returncode == 0, result.stderr
    return out


def test_grown_vocabularies_keep_every_old_value(parent_dir):
    parent = ms.MetaSelector.load(parent_dir)
    data = ms.load_data("movielens-1m", FIXTURES / "ml-1m", grow_from=parent.encoder_)
    old, new = parent.encoder_, data.encoder
    assert NEW_USER not in old.vocabularies["@user"] and NEW_USER in new.vocabularies["@user"]
    id_map = old.id_map_to(new)
    assert id_map[0] == 0 and len(np.unique(id_map)) == len(id_map)  # one new row per old row
    for mine, theirs in zip(old.layout.fields, new.layout.fields, strict=True):
        moved = id_map[mine.offset:mine.offset + mine.size] - theirs.offset
        assert [theirs.vocabulary[c] for c in moved] == mine.vocabulary, mine.name
    # an old item keeps its tags in the grown encoder
    assert {k: sorted(v) for k, v in old.tags_by_item().items()} == \
        {k: sorted(v) for k, v in new.tags_by_item().items() if k in old.tags_by_item()}


def test_old_rows_keep_weights_and_rates_new_rows_start_fresh(parent_dir):
    parent = ms.MetaSelector.load(parent_dir)
    data = ms.load_data("movielens-1m", FIXTURES / "ml-1m", grow_from=parent.encoder_)
    moved = ParentModel(parent, data.encoder, parent_dir)
    id_map = torch.as_tensor(parent.encoder_.id_map_to(data.encoder))
    new_rows = torch.ones(data.layout.num_features, dtype=torch.bool)
    new_rows[id_map] = False
    assert new_rows.any()
    key = parent.module_.ensemble.key_of["FM"]
    fresh = build_model("FM", data.layout, ModelSettings(4, [8]))
    before = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    moved.start_model("FM", fresh)
    for table in fresh.table_names:
        grown = getattr(fresh, table).detach()
        old = parent.module_.params[f"models.{key}.{table}"].detach()
        assert torch.equal(grown[id_map], old)
        assert torch.equal(grown[new_rows], before[table][new_rows])
    # the Meta-SGD rates of the parent's rows move with them; other rows keep the initial rate
    module = build_module(parent.config_, data.layout, {n: MODEL_REGISTRY[n] for n in parent.model_names_})
    moved.start_module(module)
    name = f"models.{key}.embedding"
    theirs, ours = parent.module_.alpha[name], module.alpha[name]
    assert isinstance(ours, RowStore)
    assert torch.equal(ours.dense()[id_map], theirs.dense())
    assert torch.all(ours.dense()[new_rows] == parent.config_.meta.inner_lr)
    selector = "selector.embedding"
    assert torch.equal(module.params[selector].detach()[id_map], parent.module_.params[selector].detach())


def test_train_init_from_records_the_parent_and_knows_new_users(parent_dir, tmp_path):
    out = tmp_path / "child"
    result = _train(tmp_path, FIXTURES / "ml-1m", out, "--init-from", str(parent_dir))
    assert result.returncode == 0, result.stderr
    assert "1 new" in result.stderr  # the one user absent from the earlier data
    manifest = json.loads((out / "manifest.json").read_text())
    parent_manifest = (parent_dir / "manifest.json").read_bytes()
    assert manifest["parent"]["path"] == str(parent_dir.resolve())
    assert manifest["parent"]["manifest_sha256"] == hashlib.sha256(parent_manifest).hexdigest()
    assert manifest["config"]["embedding_dim"] == 4  # the parent's configuration, continued
    ratings = _ratings()
    mine = ratings[ratings.user == NEW_USER].astype({"rating": float, "timestamp": int})
    history, candidates = mine.iloc[:-3], mine.iloc[-3:].drop(columns="rating")
    child = ms.MetaSelector.load(out).score_users([(history, candidates)])[0]
    before = ms.MetaSelector.load(parent_dir).score_users([(history, candidates)])[0]
    assert child.adapted and child.unknown["users"] == 0
    assert before.unknown["users"] == 3  # the parent never saw this user
    assert json.loads((parent_dir / "manifest.json").read_text())["parent"] is None


def test_other_layout_or_settings_are_refused_with_one_line(parent_dir, tmp_path):
    other = _train(tmp_path, FIXTURES / "ml-1m", tmp_path / "x", "--init-from", str(parent_dir), "--dataset",
                   "amazon-electronics", "--data-dir", str(FIXTURES / "amazon"))
    assert other.returncode == 2 and "feature layout" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    (tmp_path / "wide.toml").write_text("embedding_dim = 8\n")
    wider = _train(tmp_path, FIXTURES / "ml-1m", tmp_path / "y", "--init-from", str(parent_dir), "--config",
                   str(tmp_path / "wide.toml"))
    assert wider.returncode == 2, wider.stderr
    assert "has shape" in wider.stderr and len(wider.stderr.strip().splitlines()) == 1
    (tmp_path / "fewer.toml").write_text('models = ["LR", "FM"]\n')
    fewer = _train(tmp_path, FIXTURES / "ml-1m", tmp_path / "z", "--init-from", str(parent_dir), "--config",
                   str(tmp_path / "fewer.toml"))
    assert fewer.returncode == 2 and "base models" in fewer.stderr


def test_continued_training_holds_out_only_events_newer_than_the_parent(parent_dir):
    from metaselector.training.base_models import holdout_rows

    parent = ms.MetaSelector.load(parent_dir)
    times = _ratings().timestamp.astype(int)
    assert parent.trained_until_ == times[times <= times.quantile(0.8)].max()  # the earlier data's last event
    data = ms.load_data("movielens-1m", FIXTURES / "ml-1m", grow_from=parent.encoder_)
    newer = ParentModel(parent, data.encoder, parent_dir).unseen_rows(data)
    assert len(newer) and (data.timestamps[newer] > parent.trained_until_).all()
    support = np.arange(len(data.labels))
    held_out = holdout_rows(support, 0.1, seed=0, among=newer)
    assert len(held_out) == min(len(newer), round(0.1 * len(support)))
    assert np.isin(held_out, newer).all()
