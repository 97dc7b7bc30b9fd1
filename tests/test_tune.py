"""`metaselector tune`: per-model search on validation rows, a TOML overlay the other commands
read, and a study that survives SIGKILL."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from metaselector.config import load_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIG = 'deepfm_hidden = [8]\n[pretrain]\nepochs = 3\nbatch_size = 256\n'


def _tune(tmp_path, out, *extra):
    return [sys.executable, "-m", "metaselector", "tune", "--dataset", "movielens-1m", "--data-dir",
            str(FIXTURES / "ml-1m"), "--config", str(tmp_path / "run.toml"), "--out", str(out), "--quiet",
            "--threads", "1", *extra]


def _finished(out: Path, model: str) -> int:
    """Trials of `model` finished in the study file (0 while Optuna is still creating its tables)."""
    with sqlite3.connect(out / "studies.sqlite") as db:
        try:
            return db.execute("SELECT COUNT(*) FROM trials JOIN studies USING (study_id) WHERE study_name = ? AND "
                              "state IN ('COMPLETE', 'PRUNED')", (f"tune-{model}",)).fetchone()[0]
        except sqlite3.OperationalError as err:
            if "no such table" not in str(err):
                raise
            return 0


@pytest.mark.slow
def test_tune_writes_an_overlay_the_commands_read_and_continues(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG)
    out = tmp_path / "tuned"
    result = subprocess.run(_tune(tmp_path, out, "--models", "LR,MF", "--trials", "3"), capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "| MF | 3 (" in result.stdout and "LR: no search space" not in result.stdout
    overlay = tomllib.loads((out / "tuned.toml").read_text())
    assert set(overlay["model_settings"]) == {"MF"}
    assert set(overlay["model_settings"]["MF"]) <= {"embedding_dim", "l2_embedding", "l2_scope", "adam_lr"}
    assert overlay["model_settings"]["MF"].get("l2_scope", "rows") in {"rows", "table"}
    config = load_config("movielens-1m", out / "tuned.toml", {"models": ["LR", "MF"]})
    assert config.model_settings["MF"].embedding_dim == overlay["model_settings"]["MF"]["embedding_dim"]
    assert _finished(out, "MF") == 3
    again = subprocess.run(_tune(tmp_path, out, "--models", "MF", "--trials", "5"), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr
    assert _finished(out, "MF") == 5  # the first 3 kept, 2 more run


@pytest.mark.slow
def test_a_killed_tune_continues_its_study(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG)
    out = tmp_path / "tuned"
    job = subprocess.Popen(_tune(tmp_path, out, "--models", "MF", "--trials", "200"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if (out / "studies.sqlite").exists() and _finished(out, "MF") >= 2:
            break
        time.sleep(0.2)
    assert job.poll() is None, "tune ended before it could be killed"
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    before = _finished(out, "MF")
    assert before >= 2
    result = subprocess.run(_tune(tmp_path, out, "--models", "MF", "--trials", str(before + 2)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert _finished(out, "MF") == before + 2  # the trials done before the kill were kept


def test_the_first_trial_holds_the_current_settings_choices_included():
    """A study's first trial is the model's current settings: numbers inside their ranges and
    choices (the L2 scope, DeepFM's hidden sizes) among the declared ones."""
    from metaselector.models import resolve_model
    from metaselector.tuning import _start_values

    config = load_config("movielens-1m", None, {"models": ["MF", "DeepFM"],
                                                "model_settings": {"MF": {"l2_scope": "table", "embedding_dim": 16}}})
    mf = _start_values(config, "MF", resolve_model("MF").search_space)
    assert mf["l2_scope"] == "table" and mf["embedding_dim"] == 16
    deepfm = _start_values(config, "DeepFM", resolve_model("DeepFM").search_space)
    assert deepfm["l2_scope"] == "rows" and deepfm["hidden"] == "256-256-256"


def test_a_searched_model_keeps_its_place_in_the_runs_model_list(tmp_path, monkeypatch):
    """A model is seeded (initialisation, batch order) by its place in the run's model list, so
    `--models MF` searches the MF a run of the extended preset trains (place 4), not a model seeded
    as the first; a model the list lacks comes after it."""
    import metaselector.tuning as tuning

    places = {}

    class Recorder:
        def __init__(self, config, data, name, index, cls, seed, device):
            places[name] = index

        def __call__(self, trial):
            return 0.5

    monkeypatch.setattr(tuning, "_Search", Recorder)
    config = load_config("ml-latest-small", None, {}, "extended")
    assert config.models == ["LR", "FM", "FFM", "DeepFM", "MF", "DIN", "RatingMF"]
    results = tuning.tune(config, None, tmp_path, trials=1, timeout=60, seed=0, progress=False, log=lambda m: None,
                          only=["MF", "DIN"])
    assert places == {"MF": 4, "DIN": 5} and [r.model for r in results] == ["MF", "DIN"]
    places.clear()
    tuning.tune(load_config("ml-latest-small", None), None, tmp_path / "b", trials=1, timeout=60, seed=0,
                progress=False, log=lambda m: None, only=["DIN", "FFM"])
    assert places == {"FFM": 2, "DIN": 4}
