"""torchrun with 2 processes on 127.0.0.1 (gloo) equals one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import metaselector as ms

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "METASELECTOR_DIST_TIMEOUT": "30"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
pytestmark = pytest.mark.slow


def _both(tmp_path, mode: str) -> tuple[dict, dict, dict]:
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    for command in ([sys.executable, str(HERE / "distributed_worker.py"), mode, str(one)],
                    [*TORCHRUN, str(HERE / "distributed_worker.py"), mode, str(two)]):
        result = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(f"{two}.rank{r}", weights_only=True) for r in (0, 1)]
    return torch.load(one, weights_only=True), torch.load(two, weights_only=True), ranks


def _assert_equal(single: dict, double: dict, tolerance: float) -> None:
    assert set(single) == set(double)
    for key, value in single.items():
        if key.startswith(("stored/", "moment_rows/")):  # which rows hold state: exactly the same set
            assert torch.equal(value, double[key]), key
        else:
            assert torch.allclose(value, double[key], atol=tolerance, rtol=0), (key, (value - double[key]).abs().max())


def test_meta_training_on_two_processes_equals_one(tmp_path):
    single, double, ranks = _both(tmp_path, "meta")
    _assert_equal(single, double, 1e-10)
    assert any(k.startswith("stored/") and len(v) for k, v in single.items())
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key  # the replicas are identical


def test_pretraining_steps_on_two_processes_equal_one(tmp_path):
    single, double, ranks = _both(tmp_path, "pretrain")
    _assert_equal(single, double, 1e-10)
    assert any("/lazy/" in k for k in single) and any(k.startswith("LR/opt") for k in single)
    for key, value in ranks[0].items():
        assert torch.equal(value, ranks[1][key]), key


# dropout stays at its default (0.1): masks depend on the global batch and row, not on the rank
CONFIG = ('embedding_dim = 4\ndeepfm_hidden = [8]\n[pretrain]\nepochs = 2\nbatch_size = 256\n'
          '[meta]\nepochs = 2\nselector_hidden = [8]\n')


def _train(tmp_path, out, launcher):
    command = [*launcher, "-m", "metaselector", "train", "--dataset", "movielens-1m", "--data-dir",
               str(FIXTURES / "ml-1m"), "--config", str(tmp_path / "run.toml"), "--out", str(out), "--quiet",
               "--threads", "1"]
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


def test_train_on_two_processes_gives_the_one_process_model(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG)
    for out, launcher in ((tmp_path / "one", [sys.executable]), (tmp_path / "two", TORCHRUN)):
        result = _train(tmp_path, out, launcher)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = ms.MetaSelector.load(tmp_path / "one"), ms.MetaSelector.load(tmp_path / "two")
    for name, value in one.module_.params.items():
        torch.testing.assert_close(value, two.module_.params[name], atol=2e-5, rtol=1e-4)
    data = ms.load_data("movielens-1m", FIXTURES / "ml-1m")
    vocab = data.encoder.vocabularies
    events = pd.DataFrame({"user": np.asarray(vocab["@user"])[data.users],
                           "item": np.asarray(vocab["@item"])[data.items], "label": data.labels,
                           "timestamp": data.timestamps})
    history, test = events.groupby("user").head(30), events.groupby("user").tail(10)
    a, b = one.evaluate(history, test), two.evaluate(history, test)
    for metric in ("auc", "logloss", "gauc"):
        assert abs(a[metric] - b[metric]) < 1e-4, (metric, a, b)
    manifests = [json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "two")]
    assert manifests[0]["validation"]["best_epoch"] == manifests[1]["validation"]["best_epoch"]


def _workers_of(parent: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = [v.split(b"=", 1)[1] for v in environ if v.startswith(b"RANK=")]
        if ppid == parent and rank:
            found[int(rank[0])] = int(entry.name)
    return found


def test_a_killed_rank_stops_the_job_with_an_error(tmp_path):
    (tmp_path / "run.toml").write_text(CONFIG.replace("epochs = 2\nselector", "epochs = 50\npatience = 50\nselector"))
    command = [*TORCHRUN, "-m", "metaselector", "train", "--dataset", "movielens-1m", "--data-dir",
               str(FIXTURES / "ml-1m"), "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "out"),
               "--quiet", "--threads", "1"]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    state = tmp_path / "out" / "state" / "meta-MetaSelector.pt"
    deadline = time.monotonic() + 300
    while not state.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.poll() is None, "the job ended before meta-training"
    os.kill(_workers_of(job.pid)[1], signal.SIGKILL)
    killed = time.monotonic()
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    assert time.monotonic() - killed < 60
    assert b"Signal 9" in err or b"SIGKILL" in err or b"failed" in err.lower()
