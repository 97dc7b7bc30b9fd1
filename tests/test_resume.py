"""A killed `train` resumes to the same saved model; a folder holds one run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONFIG = ('embedding_dim = 4\ndeepfm_hidden = [8]\n[pretrain]\nepochs = 2\nbatch_size = 256\npatience = 5\n'
          '[meta]\nepochs = 8\npatience = 8\nusers_per_episode = 2\nselector_hidden = [8]\n')


def _train(tmp_path, out, *extra):
    return [sys.executable, "-m", "metaselector", "train", "--dataset", "movielens-1m", "--data-dir",
            str(FIXTURES / "ml-1m"), "--config", str(tmp_path / "run.toml"), "--out", str(out), "--quiet",
            "--threads", "1", *extra]


@pytest.mark.slow
def test_killed_train_resumes_to_a_bit_identical_model(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG)
    whole = subprocess.run(_train(tmp_path, tmp_path / "whole"), capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    state = tmp_path / "killed" / "state" / "meta-MetaSelector.pt"
    process = subprocess.Popen(_train(tmp_path, tmp_path / "killed"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert state.exists(), "the run ended before it saved a meta-training state"
    assert not (tmp_path / "killed" / "manifest.json").exists(), "killed too late: the run had finished"

    resumed = subprocess.run(_train(tmp_path, tmp_path / "killed", "--resume"), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("weights.safetensors", "encoder.json"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("whole", "killed")]
    assert manifests[0]["validation"] == manifests[1]["validation"]
    assert not (tmp_path / "killed" / "state").exists()


def test_a_folder_refuses_another_configuration_and_resume_of_nothing(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG.replace("epochs = 8", "epochs = 1").replace("epochs = 2", "epochs = 1"))
    out = tmp_path / "out"
    result = subprocess.run(_train(tmp_path, out, "--resume"), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "nothing to resume" in result.stderr
    assert subprocess.run(_train(tmp_path, out), capture_output=True, text=True, timeout=600).returncode == 0
    before = (out / "weights.safetensors").read_bytes()
    (tmp_path / "run.toml").write_text(CONFIG.replace("embedding_dim = 4", "embedding_dim = 5"))
    for extra in ((), ("--resume",)):
        result = subprocess.run(_train(tmp_path, out, *extra), capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and "embedding_dim" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert (out / "weights.safetensors").read_bytes() == before  # nothing already written is damaged


KILL_AFTER_SAVE = """
import os, signal, sys
from metaselector.training.state import StateFile
from metaselector.cli import main

target, count = sys.argv[1], {"n": 0}
save = StateFile.save

def save_then_die(self, state):
    save(self, state)
    if self.path.name == target:
        count["n"] += 1
        if count["n"] == 2:  # killed right after writing its second epoch's state
            os.kill(os.getpid(), signal.SIGKILL)

StateFile.save = save_then_die
main(sys.argv[2:])
"""


REPRODUCE_CONFIG = CONFIG.replace("epochs = 8\npatience = 8", "epochs = 4\npatience = 4") + \
    "[sample_level]\nepochs = 4\nhidden = [8]\n"


def _reproduce_args(folder: Path) -> list[str]:
    return ["reproduce", "--dataset", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"), "--config",
            str(folder / "run.toml"), "--seeds", "1", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def whole_reproduce(tmp_path_factory) -> list:
    """The rows of one uninterrupted `reproduce` (both kill tests compare against it)."""
    folder = tmp_path_factory.mktemp("whole")
    (folder / "run.toml").write_text(REPRODUCE_CONFIG)
    whole = subprocess.run([sys.executable, "-m", "metaselector", *_reproduce_args(folder), "--out",
                            str(folder / "out")], capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    return json.loads((folder / "out" / "results.json").read_text())["rows"]


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["simplified.pt", "sample-level.pt"])
def test_reproduce_killed_inside_simplified_or_the_sample_level_selector_resumes(tmp_path, learner,
                                                                                whole_reproduce):
    (tmp_path / "run.toml").write_text(REPRODUCE_CONFIG)
    args = _reproduce_args(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_SAVE, learner, *args, "--out", str(tmp_path / "k")],
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "k" / "state" / "seed0" / learner).is_file() and not (tmp_path / "k" / "results.json").exists()
    resumed = subprocess.run([sys.executable, "-m", "metaselector", *args, "--out", str(tmp_path / "k"), "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "k" / "results.json").read_text())["rows"] == whole_reproduce
