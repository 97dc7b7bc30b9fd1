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
