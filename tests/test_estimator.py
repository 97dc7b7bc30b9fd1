"""The MetaSelector estimator: fit, save, load, score; the same numbers as reproduce's meta-testing."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import metaselector as ms
from metaselector.data.splits import split_users
from metaselector.evaluation.diagnostics import WEIGHT_TOLERANCE
from metaselector.experiment.context import Timer, prepare_training
from metaselector.experiment.methods.metaselector import VALIDATED_ROW, MetaSelectorMethod
from metaselector.selection.tasks import tasks_for

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY = {"embedding_dim": 4, "deepfm_hidden": [8], "pretrain": {"epochs": 1, "batch_size": 256},
        "meta": {"epochs": 1, "selector_hidden": [8]}}


def raw_events(data, ratings: bool = False) -> pd.DataFrame:
    """The dataset's events as raw records, with 0/1 labels (and, `ratings`, the raw ratings)."""
    vocab = data.encoder.vocabularies
    frame = pd.DataFrame({"user": np.asarray(vocab["@user"])[data.users],
                          "item": np.asarray(vocab["@item"])[data.items],
                          "label": data.labels, "timestamp": data.timestamps})
    return frame.assign(rating=data.ratings) if ratings else frame


@pytest.fixture(scope="module")
def fitted(ml1m_fixture):
    torch.set_num_threads(1)
    return ms.MetaSelector(config=TINY, seed=0).fit(ml1m_fixture)


def test_unfitted_estimator_says_so():
    with pytest.raises(ms.NotFittedError, match="not fitted"):
        ms.MetaSelector().predict_proba([{"user": 1, "item": 1, "timestamp": 0}])


def test_saved_model_loads_to_bit_identical_predictions(fitted, ml1m_fixture, tmp_path):
    fitted.save(tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert manifest["base_models"] == ["LR", "FM", "FFM", "DeepFM"] and manifest["format_version"] == 1
    assert set(manifest["training_data_sha256"]) == {"ratings.dat", "users.dat", "movies.dat"}
    # what the selector does, measured on held-out rows: the kind follows the measured spreads
    diagnostics = json.loads((tmp_path / "model" / "diagnostics.json").read_text())
    spread = max(*diagnostics["user_weight_spread"].values(), *diagnostics["candidate_weight_spread"].values())
    assert manifest["selector_kind"] == diagnostics["selector_kind"] == \
        ("global-blend" if spread < WEIGHT_TOLERANCE else "learned")
    assert set(diagnostics["mean_weight"]) == set(manifest["base_models"]) and diagnostics["users"] > 0
    loaded = ms.MetaSelector.load(tmp_path / "model")
    assert loaded.selector_kind_ == manifest["selector_kind"]
    events = raw_events(ml1m_fixture)
    requests = [(events[events.user == u].iloc[:-3], events[events.user == u].iloc[-3:].drop(columns="label"))
                for u in events.user.unique()[:6]]
    requests.append((None, requests[0][1]))  # no history: the un-adapted model, flagged
    before, after = fitted.score_users(requests), loaded.score_users(requests)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        np.testing.assert_array_equal(a.weights, b.weights)
    assert [s.adapted for s in before] == [True] * 6 + [False]
    np.testing.assert_allclose(before[0].weights.sum(axis=1), 1.0, rtol=1e-6)
    # batched scoring equals scoring one user at a time
    alone = [fitted.predict_proba(c, h) for h, c in requests]
    for a, b in zip(before, alone, strict=True):
        np.testing.assert_allclose(a.probabilities, b, atol=1e-6)


def test_score_equals_reproduce_meta_testing(ml1m_fixture):
    """Raw events through the estimator's online path give the validated Table 3 row's meta-testing
    probabilities (<= 1e-6): `train` and the row run the same meta-training stage."""
    torch.set_num_threads(1)
    data = ml1m_fixture
    config = ms.RunConfig.from_dict({**TINY, "dataset": "movielens-1m"})
    split = split_users(data.users, data.timestamps, seed=0)
    context = prepare_training(config, data, split, 0, Timer(lambda m: None))
    method = MetaSelectorMethod(VALIDATED_ROW, "extension", config.meta)
    method.fit(context)
    tasks = tasks_for(data.users, split.train, split.test)
    offline = method.predict(context, tasks)
    estimator = ms.MetaSelector(config=config, seed=0)._fit_context(context)
    # with their ratings, which the selector's profile reads, as the offline rows carry them
    events = raw_events(data, ratings=True)
    requests = [(events.iloc[t.support], events.iloc[t.query].drop(columns=["label", "rating"])) for t in tasks]
    online = estimator.score_users(requests)
    for a, b in zip(offline, online, strict=True):
        np.testing.assert_allclose(b.probabilities, a, atol=1e-6, rtol=0)


@pytest.mark.parametrize("damage,needle", [
    (lambda d: (d / "weights.safetensors").write_bytes((d / "weights.safetensors").read_bytes()[:100]),
     "weights.safetensors: SHA-256"),
    (lambda d: (d / "encoder.json").unlink(), "encoder.json: file not found"),
    (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json: not a readable manifest"),
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "format_version": 99})), "newer than this package"),
])
def test_damaged_saved_model_is_refused_naming_the_file(fitted, tmp_path, damage, needle):
    fitted.save(tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(ms.InputError, match=needle):
        ms.MetaSelector.load(tmp_path / "m")


def test_a_saved_model_never_imports_a_module_it_names(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    manifest["config"]["models"][0] = "antigravity:Fly"  # importing it would open a browser
    (tmp_path / "m" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ms.InputError, match="not a registered model"):
        ms.MetaSelector.load(tmp_path / "m")
    assert "antigravity" not in sys.modules


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "metaselector", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_train_then_score_on_the_command_line(tmp_path, ml1m_fixture):
    config = tmp_path / "tiny.toml"
    config.write_text('embedding_dim = 4\ndeepfm_hidden = [8]\n[pretrain]\nepochs = 1\nbatch_size = 256\n'
                      '[meta]\nepochs = 1\nselector_hidden = [8]\n')
    result = _cli("train", "--dataset", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"), "--config",
                  str(config), "--out", str(tmp_path / "model"), "--quiet", "--threads", "1")
    assert result.returncode == 0, result.stderr
    events = raw_events(ml1m_fixture)
    first = events[events.user.isin(events.user.unique()[:3])]
    history = first.groupby("user").head(10).rename(columns={"label": "rating"}).assign(rating=lambda f: f.rating * 5)
    candidates = first.groupby("user").tail(4).drop(columns="label")
    candidates = pd.concat([candidates, pd.DataFrame([{"user": "newcomer", "item": "1", "timestamp": 0}])])
    history.to_csv(tmp_path / "history.csv", index=False)
    candidates.to_parquet(tmp_path / "candidates.parquet")
    result = _cli("score", "--model", str(tmp_path / "model"), "--history", str(tmp_path / "history.csv"),
                  "--candidates", str(tmp_path / "candidates.parquet"), "--out", str(tmp_path / "scored.csv"))
    assert result.returncode == 0, result.stderr
    scored = pd.read_csv(tmp_path / "scored.csv")
    assert list(scored.columns) == ["user", "item", "timestamp", "probability", "weight_LR", "weight_FM",
                                    "weight_FFM", "weight_DeepFM", "adapted"]
    assert len(scored) == len(candidates) and scored["probability"].between(0, 1).all()
    assert scored["adapted"].tolist() == [True] * 12 + [False]
    model = ms.MetaSelector.load(tmp_path / "model")
    expected = model.predict_proba(candidates.iloc[:4], history[history.user == candidates.user.iloc[0]])
    np.testing.assert_allclose(scored["probability"].to_numpy()[:4], expected, atol=1e-6)


def test_score_with_a_bad_file_exits_2_naming_it(fitted, tmp_path):
    fitted.save(tmp_path / "m")
    (tmp_path / "h.csv").write_text("user,item,rating,timestamp\n1,1,5,100\n1,2,x,200\n")
    (tmp_path / "c.csv").write_text("user,item,timestamp\n1,3,300\n")
    result = _cli("score", "--model", str(tmp_path / "m"), "--history", str(tmp_path / "h.csv"),
                  "--candidates", str(tmp_path / "c.csv"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "h.csv: line 3: field 'rating'" in result.stderr
