import collections
from pathlib import Path

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
        tensors = TensorData(tensors.ids, tensors.weights.double(), tensors.labels.double(), tensors.users)
        split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
        return tensors, tasks_for(ml1m_fixture.users, split.support, split.query)[:n_users]

    return make


OUTCOMES = pytest.StashKey[collections.Counter]()


def pytest_configure(config):
    config.stash[OUTCOMES] = collections.Counter()


@pytest.fixture(scope="session")
def outcomes(request):
    """Counts of how generated bad-input cases ended (tests/test_bad_input.py)."""
    return request.config.stash[OUTCOMES]


def pytest_terminal_summary(terminalreporter, config):
    counts = config.stash.get(OUTCOMES, None)
    if counts:
        terminalreporter.write_line(
            f"bad-input cases: {sum(counts.values())} passed checks ({counts['clean error']} clean errors, "
            f"{counts['correct result']} correct results); a traceback or a wrong result fails its test")
