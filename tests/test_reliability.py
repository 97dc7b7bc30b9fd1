"""Caches, archives, odd but legitimate data, and data that leaves nothing to train on."""

import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metaselector.data.loading import load_dataset
from metaselector.errors import InputError
from metaselector.io_utils import atomic_write_text, cache_home, strict

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "metaselector", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_damaged_or_foreign_cache_files_are_rebuilt():
    quiet = {"log": lambda m: None}
    first = load_dataset("movielens-1m", FIXTURES / "ml-1m", **quiet)
    other = load_dataset("movielens-100k", FIXTURES / "ml-100k", **quiet)
    caches = sorted((cache_home() / "processed").glob("*.npz"))
    ml1m = next(p for p in caches if p.name.startswith("movielens-1m"))
    ml100k = next(p for p in caches if p.name.startswith("movielens-100k"))
    for damage in (lambda: ml1m.write_bytes(b""), lambda: shutil.copy(ml100k, ml1m),
                   lambda: ml1m.write_bytes(ml1m.read_bytes()[:200])):
        damage()
        again = load_dataset("movielens-1m", FIXTURES / "ml-1m", **quiet)
        assert again.statistics() == first.statistics()
        np.testing.assert_array_equal(again.ids, first.ids)
        assert again.name == "movielens-1m" != other.name  # never the other dataset's encoding


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, text in members.items():
            zipped.writestr(name, text)
    return path


def test_archive_without_its_folder_is_the_same_clean_error_every_time(tmp_path):
    files = {f"ml-1m/{n}": (FIXTURES / "ml-1m" / n).read_text(encoding="latin-1")
             for n in ("ratings.dat", "users.dat", "movies.dat")}
    flat = {name.split("/")[1]: text for name, text in files.items()}
    _zip(tmp_path / "ml-1m.zip", flat)
    for _ in range(2):
        with pytest.raises(InputError, match="expected the folder ml-1m/"):
            load_dataset("movielens-1m", tmp_path, use_cache=False, log=lambda m: None)
    _zip(tmp_path / "ml-1m.zip", files)  # the right archive now: extracted and read, concurrently
    results, errors = [], []

    def read():
        try:
            results.append(load_dataset("movielens-1m", tmp_path, use_cache=False, log=lambda m: None))
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert all(r.statistics()["samples"] == 4967 for r in results)
    leftovers = [p for p in (cache_home() / "extracted").iterdir() if p.name.startswith(".") and p.is_dir()]
    assert not leftovers


def _events(n_users=6, n_items=8, start=1_000_000_000):
    rows = [{"user_id": f"u{u}", "item_id": f"i{i}", "clicked": (u + i) % 2, "ts": start + 3600 * (u * 10 + i),
             "tags": ["x", "y"] if i % 3 else ["z"]} for u in range(n_users) for i in range(n_items)]
    return pd.DataFrame(rows)


COLUMNS = ('[columns]\nuser = "user_id"\nitem = "item_id"\ntimestamp = "ts"\nlabel = "clicked"\n'
           'multi_hot = ["tags"]\n')


def test_parquet_datetimes_and_list_columns_read_as_their_plain_forms(tmp_path):
    from metaselector import load_data

    events = _events()
    plain = events.assign(tags=events["tags"].str.join(";"))
    plain.to_csv(tmp_path / "plain.csv", index=False)
    (tmp_path / "plain.toml").write_text(COLUMNS + 'separator = ";"\n')
    typed = events.assign(ts=pd.to_datetime(events["ts"], unit="s", utc=True))
    typed.to_parquet(tmp_path / "typed.parquet")
    (tmp_path / "typed.toml").write_text(COLUMNS)
    a = load_data("custom", data_file=tmp_path / "plain.csv", columns_file=tmp_path / "plain.toml")
    b = load_data("custom", data_file=tmp_path / "typed.parquet", columns_file=tmp_path / "typed.toml")
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.ids, b.ids)
    tags = a.layout.fields[a.layout.field_index("tags")]
    assert tags.vocabulary == ["x", "y", "z"]  # split on the declared separator


@pytest.mark.parametrize("frame,needle", [
    (_events(n_users=1, n_items=3), "no user has the 4 or more samples"),
    (_events().assign(clicked=1), "every label is positive"),
])
def test_data_with_nothing_to_train_on_is_refused_before_any_work(tmp_path, frame, needle):
    frame.to_csv(tmp_path / "events.csv", index=False)
    (tmp_path / "columns.toml").write_text(COLUMNS)
    for command in ("reproduce", "train"):
        result = _cli(command, "--dataset", "custom", "--data-file", str(tmp_path / "events.csv"), "--columns",
                      str(tmp_path / "columns.toml"), "--out", str(tmp_path / command))
        assert result.returncode == 2 and needle in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / command).exists()


def test_results_are_strict_json_with_null_for_undefined_metrics():
    results = {"rows": {"MetaSelector": {"auc": float("nan"), "logloss": 0.5, "gauc": float("inf")}}}
    text = json.dumps(strict(results), allow_nan=False)
    assert json.loads(text)["rows"]["MetaSelector"] == {"auc": None, "logloss": 0.5, "gauc": None}


def test_written_files_take_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "out.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == 0o644


def test_columns_file_mistakes_name_the_file_and_the_key(tmp_path):
    _events().to_csv(tmp_path / "events.csv", index=False)
    cases = {'[colums]\nuser = "user_id"\n': "unknown table or key 'colums'",
             '[columns]\ncategorical = "device"\n': "categorical must be a list",
             '[columns]\nuser = "user_id"\nitem = "user_id"\n': "for two roles"}
    for text, needle in cases.items():
        (tmp_path / "c.toml").write_text(text)
        result = _cli("inspect", "custom", "--data-file", str(tmp_path / "events.csv"), "--columns",
                      str(tmp_path / "c.toml"))
        assert result.returncode == 2 and "c.toml" in result.stderr and needle in result.stderr, result.stderr
