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
