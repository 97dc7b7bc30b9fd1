import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from metaselector.data.features import bag
from metaselector.data.history import history_positions
from metaselector.data.loading import load_dataset
from metaselector.data.splits import split_users
from metaselector.errors import InputError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_ml_latest_small_statistics(ml_small):
    stats = ml_small.statistics()
    assert (stats["users"], stats["items"], stats["samples"]) == (610, 9724, 100836)
    assert stats["features"] == ml_small.layout.num_features == 1 + sum(f.size for f in ml_small.layout.fields)
    assert 0.4 < stats["positive_rate"] < 0.6


@pytest.mark.parametrize("name,folder,fields", [
    ("movielens-1m", "ml-1m", 10), ("movielens-100k", "ml-100k", 10), ("amazon-electronics", "amazon", 6)])
def test_format_fixtures_load(name, folder, fields):
    data = load_dataset(name, FIXTURES / folder, use_cache=False, log=lambda m: None)
    assert data.layout.num_fields == fields
    assert data.ids.shape == data.weights.shape and data.ids.shape[0] == len(data.labels)
    assert data.ids.max() < data.layout.num_features and data.ids.min() >= 0
    assert set(np.unique(data.labels)) == {0.0, 1.0}
    # weights of a multi-hot field mean-pool: they sum to 1 wherever the field is present
    for f in data.layout.fields:
        sums = data.weights[:, f.slot_start:f.slot_stop].sum(axis=1)
        assert np.all((np.abs(sums - 1) < 1e-5) | (sums == 0))


def test_movielens_100k_and_1m_agree_on_the_same_ratings():
    a = load_dataset("movielens-1m", FIXTURES / "ml-1m", use_cache=False, log=lambda m: None)
    b = load_dataset("movielens-100k", FIXTURES / "ml-100k", use_cache=False, log=lambda m: None)
    assert a.statistics()["samples"] == b.statistics()["samples"]
    np.testing.assert_array_equal(a.labels, b.labels)


def test_history_never_contains_own_or_later_interactions(ml_small):
    layout = ml_small.layout
    field = layout.fields[layout.field_index("user_history_movie")]
    movie = layout.fields[layout.field_index("movie_id")]
    history = ml_small.ids[:, field.slot_start:field.slot_stop].astype(np.int64) - field.offset
    own = ml_small.ids[:, movie.slot_start].astype(np.int64) - movie.offset
    assert not np.any((history == own[:, None]) & (history >= 0))
    # every history item was rated by the same user strictly earlier
    rows = np.random.default_rng(0).choice(len(own), 300, replace=False)
    for r in rows:
        u, t = ml_small.users[r], ml_small.timestamps[r]
        earlier = set(ml_small.items[(ml_small.users == u) & (ml_small.timestamps < t)])
        assert set(history[r][history[r] >= 0]) <= earlier


def test_history_positions_skip_ties():
    users = np.array([0, 0, 0, 0, 1, 1])
    times = np.array([1, 2, 2, 3, 5, 6])
    pos, valid = history_positions((users, users), times, times, np.zeros(len(users), dtype=np.int64), 2)
    got = [sorted(p[v].tolist()) for p, v in zip(pos, valid, strict=True)]
    assert got == [[], [0], [0], [1, 2], [], [4]]


def test_bag_counts_and_caps():
    codes, weights = bag(np.array([0, 0, 0, 2]), np.array([5, 5, 1, 3]), 3, cap=8)
    assert codes[0].tolist()[:2] == [1, 5] and weights[0].tolist()[:2] == pytest.approx([1 / 3, 2 / 3])
    assert (codes[1] == -1).all() and weights[2].sum() == pytest.approx(1)


def test_splits_disjoint_deterministic_and_complete(ml_small):
    a = split_users(ml_small.users, ml_small.timestamps, seed=3, new_users=0.1)
    b = split_users(ml_small.users, ml_small.timestamps, seed=3, new_users=0.1)
    parts = a.parts()
    for key, rows in parts.items():
        np.testing.assert_array_equal(rows, b.parts()[key])
    everything = np.concatenate(list(parts.values()))
    assert len(everything) == len(np.unique(everything)) == len(ml_small.labels) - a.dropped_samples
    assert not set(ml_small.users[a.new_test]) & set(ml_small.users[a.test])
    share = len(a.test) / (len(a.test) + len(a.train))
    assert 0.18 < share < 0.22
    assert 0.23 < len(a.query) / len(a.train) < 0.27
    c = split_users(ml_small.users, ml_small.timestamps, seed=4)
    assert not np.array_equal(np.sort(c.test), np.sort(a.test))


def test_temporal_split_tests_the_latest(ml_small):
    s = split_users(ml_small.users, ml_small.timestamps, seed=0, temporal=True)
    for u in np.unique(ml_small.users)[:50]:
        train_t = ml_small.timestamps[s.train][ml_small.users[s.train] == u]
        test_t = ml_small.timestamps[s.test][ml_small.users[s.test] == u]
        assert train_t.max() <= test_t.min()


def test_small_users_are_dropped_and_counted():
    users = np.array([0] * 10 + [1] * 2)
    s = split_users(users, np.arange(12), seed=0)
    assert s.dropped_users == 1 and s.dropped_samples == 2
    assert 1 not in users[np.concatenate(list(s.parts().values()))]


def test_cache_is_reused_and_keyed_by_content(tmp_path):
    folder = tmp_path / "ml-1m"
    shutil.copytree(FIXTURES / "ml-1m", folder)
    first = load_dataset("movielens-1m", folder, log=lambda m: None)
    cached = list((tmp_path.parent).glob("**/processed/*.npz"))
    again = load_dataset("movielens-1m", folder, log=lambda m: None)
    np.testing.assert_array_equal(first.ids, again.ids)
    with open(folder / "ratings.dat", "a") as handle:
        handle.write("1::1::5::978300760\n")
    changed = load_dataset("movielens-1m", folder, log=lambda m: None)
    assert len(changed.labels) == len(first.labels) + 1
    assert cached is not None


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "metaselector", *args], capture_output=True, text=True, cwd=cwd)


def _broken_ml1m(tmp_path, line):
    folder = tmp_path / "ml-1m"
    shutil.copytree(FIXTURES / "ml-1m", folder)
    lines = (folder / "ratings.dat").read_text().splitlines()
    lines[6] = line
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("line,needle", [("1::2::abc::978300760", "line 7"), ("1,2,3,978300760", "line 7")])
def test_malformed_line_names_file_and_line(tmp_path, line, needle):
    folder = _broken_ml1m(tmp_path, line)
    with pytest.raises(InputError, match=needle) as info:
        load_dataset("movielens-1m", folder, use_cache=False, log=lambda m: None)
    assert "ratings.dat" in str(info.value)
    result = _cli("inspect", "movielens-1m", "--data-dir", str(folder))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "ratings.dat: line 7" in result.stderr


def test_cli_bad_input_exits_2_with_one_line(tmp_path):
    for args in (["inspect", "no-such-dataset"], ["inspect", "movielens-1m", "--data-dir", str(tmp_path)]):
        result = _cli(*args)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_amazon_malformed_json_line(tmp_path):
    folder = tmp_path / "amazon"
    shutil.copytree(FIXTURES / "amazon", folder)
    path = folder / "reviews_Electronics_5.json.gz"
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    record = json.loads(lines[2])
    record["overall"] = "five"
    lines[2] = json.dumps(record)
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    with pytest.raises(InputError, match=r"reviews_Electronics_5.json.gz: line 3"):
        load_dataset("amazon-electronics", folder, use_cache=False, log=lambda m: None)


def test_cli_inspect_json_on_shipped_dataset():
    result = _cli("inspect", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert (stats["users"], stats["items"], stats["samples"]) == (610, 9724, 100836)
    assert {"features", "positive_rate"} <= stats.keys()


def test_custom_csv_with_columns_file(tmp_path):
    rows = ["uid,iid,stars,ts,city,tags"]
    rng = np.random.default_rng(0)
    for u in range(12):
        for k in range(10):
            rows.append(f"u{u},i{rng.integers(30)},{rng.integers(1, 6)},{1000 + k},c{u % 3},a|b{k % 2}")
    (tmp_path / "mine.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "cols.toml").write_text('[columns]\nuser = "uid"\nitem = "iid"\nrating = "stars"\nlabel = ""\n'
                                        'timestamp = "ts"\ncategorical = ["city"]\nmulti_hot = ["tags"]\n')
    result = _cli("inspect", "custom", "--data-file", str(tmp_path / "mine.csv"), "--columns",
                  str(tmp_path / "cols.toml"), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["samples"] == 120
    (tmp_path / "cols.toml").write_text('[columns]\nuser = "nope"\n')
    bad = _cli("inspect", "custom", "--data-file", str(tmp_path / "mine.csv"), "--columns", str(tmp_path / "cols.toml"))
    assert bad.returncode == 2 and "column 'nope' not found" in bad.stderr


def test_synth_writes_publisher_formats(tmp_path):
    result = _cli("synth", "--like", "movielens-1m", "--users", "25", "--out", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    first = (tmp_path / "s" / "ml-1m" / "ratings.dat").read_text().splitlines()[0].split("::")
    assert len(first) == 4 and all(x.isdigit() for x in first)
    data = load_dataset("movielens-1m", tmp_path / "s", use_cache=False, log=lambda m: None)
    assert data.statistics()["users"] == 25
    assert np.bincount(data.users).min() >= 20


def test_shipped_files_match_published_checksums(tmp_path):
    from metaselector.data.loading import verify_builtin
    from metaselector.data.registry import builtin_ml_latest_small

    verify_builtin(builtin_ml_latest_small())
    shutil.copytree(builtin_ml_latest_small(), tmp_path / "copy")
    with open(tmp_path / "copy" / "ratings.csv", "a") as handle:
        handle.write("1,1,4.0,964982703\n")
    with pytest.raises(InputError, match="ratings.csv: sha256"):
        verify_builtin(tmp_path / "copy")


def test_config_file_with_unknown_choice_exits_2_naming_file_and_setting(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[meta]\nstop_on = "test-rows"\n')
    result = _cli("reproduce", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "run.toml" in result.stderr and "meta.stop_on" in result.stderr and "held-out-rows" in result.stderr
    assert not (tmp_path / "out" / "results.json").exists()
