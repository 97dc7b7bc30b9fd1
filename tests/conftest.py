import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache folder: nothing touches the user's cache."""
    monkeypatch.setenv("METASELECTOR_HOME", str(tmp_path_factory.mktemp("home")))


@pytest.fixture(scope="session")
def ml_small():
    from metaselector.data.loading import load_dataset

    return load_dataset("ml-latest-small", use_cache=False, log=lambda m: None)


@pytest.fixture(scope="session")
def ml1m_fixture():
    from metaselector.data.loading import load_dataset

    return load_dataset("movielens-1m", FIXTURES / "ml-1m", use_cache=False, log=lambda m: None)


@pytest.fixture
def make_module(ml1m_fixture):
    """A MetaSGDEnsemble over LR, FM, FFM, DeepFM and a selector on the MovieLens-1M fixture, with
    varied per-parameter rates (every table row written, as a dense tensor would be), so that
    alpha's gradient is a real test."""
    import torch

    from metaselector.models import ModelSettings, build_model
    from metaselector.selection.ensemble import Ensemble
    from metaselector.selection.meta_settings import MetaSettings
    from metaselector.selection.metasgd import MetaSGDEnsemble
    from metaselector.selection.selector import Selector
    from metaselector.training.row_state import RowStore

    def make(first_order: bool = False, dtype=torch.float64, seed: int = 0, rates: tuple | None = (0.01, 0.2)):
        torch.manual_seed(seed)
        settings = ModelSettings(embedding_dim=4, hidden=[8, 8], dropout=0.0, init_std=0.3)
        models = {n: build_model(n, ml1m_fixture.layout, settings) for n in ["LR", "FM", "FFM", "DeepFM"]}
        with torch.no_grad():
            models["LR"].linear.normal_(0, 0.3)
        selector = Selector(ml1m_fixture.layout, ModelSettings(4, [8]), 4, uses_predictions=True)
        with torch.no_grad():
            selector.deep[-1].weight.normal_(0, 0.3)
        module = MetaSGDEnsemble(Ensemble(models, selector).to(dtype), MetaSettings(inner_lr=0.05,
                                                                                    first_order=first_order))
        with torch.no_grad():
            for a in module.alpha.values() if rates else ():
                if isinstance(a, RowStore):
                    a.write(torch.arange(a.shape[0]), torch.empty(a.shape, dtype=dtype).uniform_(*rates))
                else:
                    a.uniform_(*rates)
        return module

    return make


@pytest.fixture
def make_episode(ml1m_fixture):
    """(float64 tensors of the fixture, the first `n_users` users' support/query tasks)."""
    from metaselector.data.splits import split_users
    from metaselector.selection.tasks import tasks_for
    from metaselector.training.tensors import TensorData

    def make(n_users: int = 3):
        tensors = TensorData.from_encoded(ml1m_fixture)
        tensors = TensorData(tensors.ids, tensors.weights.double(), tensors.labels.double(), tensors.users,
                             tensors.timestamps, tensors.ratings)
        split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
        return tensors, tasks_for(ml1m_fixture.users, split.support, split.query)[:n_users]

    return make


SERVE_TINY = {"embedding_dim": 4, "deepfm_hidden": [8], "pretrain": {"epochs": 1, "batch_size": 256},
              "meta": {"epochs": 1, "selector_hidden": [8]}}


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    import torch

    import metaselector

    torch.set_num_threads(1)
    data = metaselector.load_data("movielens-1m", FIXTURES / "ml-1m")
    folder = tmp_path_factory.mktemp("serve") / "model"
    metaselector.MetaSelector(config=SERVE_TINY).fit(data).save(folder)
    return folder


@pytest.fixture(scope="session")
def events():
    import metaselector

    data = metaselector.load_data("movielens-1m", FIXTURES / "ml-1m")
    vocab = data.encoder.vocabularies
    return pd.DataFrame({"user": np.asarray(vocab["@user"])[data.users], "item": np.asarray(vocab["@item"])[data.items],
                         "rating": data.labels * 4 + 1, "timestamp": data.timestamps})


class ServeProcess:
    """`metaselector serve` in a subprocess on a free port of 127.0.0.1."""

    def __init__(self, model_dir: Path, db: Path, *options: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # the server's log goes to a file: a pipe nobody reads fills up and blocks the server
        handle, name = tempfile.mkstemp(prefix="metaselector-serve-", suffix=".log")
        self.log_path, self._log = Path(name), os.fdopen(handle, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metaselector", "serve", "--model", str(model_dir), "--port", str(self.port),
             "--history-db", str(db), "--threads", "1", *options], stdout=subprocess.DEVNULL, stderr=self._log,
            start_new_session=True)  # its own process group: stop() ends uvicorn's workers too
        # started: every worker listens. Health answers once the first one does; on a busy
        # machine the others may still be loading the model, so new connections (each hashed by
        # the kernel to one worker's socket) are made until each worker has answered one.
        workers = int(options[options.index("--workers") + 1]) if "--workers" in options else 1
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with httpx.Client() as client:  # a connection of its own
                    health = client.get(f"{self.url}/v1/health", timeout=1)
                if health.status_code == 200:
                    seen.add(health.json()["worker_pid"])
                    if len(seen) == workers:
                        return
                    continue
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
            if self.process.poll() is not None:
                raise RuntimeError(self.log())
        raise RuntimeError(f"server did not start: {len(seen)} of {workers} workers answered")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body, **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=60, **kwargs)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and any worker processes
        except ProcessLookupError:
            pass
        self.process.wait()
        self._log.close()



@pytest.fixture(scope="session")
def serve_process():
    """The class that starts `metaselector serve` in a subprocess (ServeProcess)."""
    return ServeProcess


OUTCOMES = pytest.StashKey[collections.Counter]()


def pytest_configure(config):
    config.stash[OUTCOMES] = collections.Counter()


@pytest.fixture(scope="session")
def outcomes(request):
    """Counts of how generated bad-input cases ended (tests/test_bad_input.py)."""
    return request.config.stash[OUTCOMES]


def pytest_terminal_summary(terminalreporter, config):
    counts = config.stash.get(OUTCOMES, None)
    http = {k: v for k, v in (counts or {}).items() if k.startswith("http")}
    if http:
        terminalreporter.write_line("generated HTTP requests: " + ", ".join(f"{v} {k[5:]}" for k, v in sorted(
            http.items())) + f" ({sum(http.values())} in all); a 500 fails its test")
    counts = {k: v for k, v in (counts or {}).items() if not k.startswith("http")}
    if counts:
        terminalreporter.write_line(
            f"bad-input cases: {sum(counts.values())} passed checks ({counts['clean error']} clean errors, "
            f"{counts['correct result']} correct results); a traceback or a wrong result fails its test")
