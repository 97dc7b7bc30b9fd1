"""Generated bad input for every loader, the columns file, the configuration and saved files.

Each case must end one of two ways: exit status 2 with one line naming the file (or the
setting), or a correct result. A traceback, any other exit status, or a wrong result fails.
Outcomes are counted and printed at the end of the run ("bad-input cases").
"""

import gzip
import json
import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metaselector.cli import main
from metaselector.config import load_config
from metaselector.errors import ConfigError, InputError
from metaselector.settings import validate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
QUIET = {"deadline": None, "derandomize": True, "suppress_health_check": [HealthCheck.function_scoped_fixture]}
CASES = settings(max_examples=80, **QUIET)

# Values a careless file holds: empty, text, huge, non-finite, negative, fractional, odd bytes.
ODD_FIELD = st.one_of(
    st.sampled_from(["", "x", "inf", "-inf", "nan", "NaN", "1e19", "1e25", "-1", "0", "1.5", "2.0", "999999999999",
                     "true", "None", "\u00e9", "1,2", "::", "\t", '"', "9" * 40]),
    st.text(max_size=8),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def run(args, capsys) -> tuple[int, str, str]:
    """The command line in this process: (exit status, stdout, stderr). A traceback propagates."""
    try:
        main(list(args))
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def judge(outcomes, code: int, err: str, names: list[str], correct) -> None:
    """Exit 2 with one line naming one of `names`, or exit 0 and `correct()` holds."""
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert any(name in lines[0] for name in names), lines[0]
        outcomes["clean error"] += 1
    else:
        assert code == 0, err
        assert correct(), "exit 0 with a wrong result"
        outcomes["correct result"] += 1


def _mutated_copy(tmp_path, folder: str, filename: str, mutate) -> Path:
    target = tmp_path / "data"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(FIXTURES / folder, target)
    path = target / filename
    opener = gzip.open if filename.endswith(".gz") else open
    with opener(path, "rt", encoding="latin-1") as handle:
        lines = handle.read().splitlines()
    lines = mutate(lines)
    with opener(path, "wt", encoding="latin-1", errors="replace") as handle:
        handle.write("\n".join(lines) + ("\n" if lines else ""))
    return target


def _mutate_field(separator: str, header: int):
    @st.composite
    def strategy(draw):
        row = draw(st.integers(min_value=header, max_value=40))
        column = draw(st.integers(min_value=0, max_value=3))
        value = draw(ODD_FIELD)
        drop_or_extra = draw(st.sampled_from(["replace", "replace", "replace", "drop", "extra", "truncate"]))

        def mutate(lines):
            fields = lines[row].split(separator)
            if drop_or_extra == "drop":
                fields = fields[:-1]
            elif drop_or_extra == "extra":
                fields.append(value)
            elif drop_or_extra == "truncate":
                return lines[:row] + [lines[row][: len(lines[row]) // 2]]
            else:
                fields[column] = value
            lines[row] = separator.join(fields)
            return lines

        return mutate

    return strategy()


LOADERS = [
    ("movielens-1m", "ml-1m", "ratings.dat", "::", 0),
    ("movielens-100k", "ml-100k", "u.data", "\t", 0),
]


@pytest.mark.parametrize("name,folder,filename,separator,header", LOADERS)
@CASES
@given(data=st.data())
def test_loaders_on_malformed_rating_lines(tmp_path, capsys, outcomes, name, folder, filename, separator, header,
                                           data):
    mutate = data.draw(_mutate_field(separator, header))
    target = _mutated_copy(tmp_path, folder, filename, mutate)
    expected_samples = sum(1 for line in (target / filename).read_text(encoding="latin-1").splitlines() if line)
    code, out, err = run(["inspect", name, "--data-dir", str(target), "--json", "--no-cache"], capsys)

    def correct() -> bool:  # every line became one sample with a sane timestamp
        return json.loads(out)["samples"] == expected_samples

    judge(outcomes, code, err, [filename], correct)


@CASES
@given(field=st.sampled_from(["reviewerID", "asin", "overall", "unixReviewTime"]),
       value=st.one_of(ODD_FIELD, st.none(), st.floats(), st.integers(), st.lists(st.integers(), max_size=2)),
       row=st.integers(min_value=0, max_value=30), drop=st.booleans())
def test_amazon_reviews_with_odd_fields(tmp_path, capsys, outcomes, field, value, row, drop):
    def mutate(lines):
        record = json.loads(lines[row])
        if drop:
            del record[field]
        else:
            record[field] = value
        lines[row] = json.dumps(record)
        return lines

    target = _mutated_copy(tmp_path, "amazon", "reviews_Electronics_5.json.gz", mutate)
    code, out, err = run(["inspect", "amazon-electronics", "--data-dir", str(target), "--json", "--no-cache"], capsys)
    with gzip.open(target / "reviews_Electronics_5.json.gz", "rt") as handle:
        expected = sum(1 for _ in handle)
    judge(outcomes, code, err, ["reviews_Electronics_5.json.gz"], lambda: json.loads(out)["samples"] == expected)


CUSTOM_ROWS = [f"{u},{i},{1000 + 100 * u + i},{(u + i) % 2},{'ab'[i % 2]},{'x|y' if i % 3 else 'z'}"
               for u in range(1, 7) for i in range(1, 9)]
CUSTOM_HEADER = "user_id,item_id,ts,clicked,device,tags"


@CASES
@given(row=st.integers(min_value=0, max_value=len(CUSTOM_ROWS) - 1), column=st.integers(min_value=0, max_value=5),
       value=ODD_FIELD)
def test_custom_csv_with_odd_values(tmp_path, capsys, outcomes, row, column, value):
    rows = list(CUSTOM_ROWS)
    fields = rows[row].split(",")
    fields[column] = value.replace(",", ";").replace("\n", " ")
    rows[row] = ",".join(fields)
    data = tmp_path / "events.csv"
    data.write_text("\n".join([CUSTOM_HEADER, *rows]) + "\n")
    columns = tmp_path / "columns.toml"
    columns.write_text('[columns]\nuser = "user_id"\nitem = "item_id"\ntimestamp = "ts"\nlabel = "clicked"\n'
                       'categorical = ["device"]\nmulti_hot = ["tags"]\n')
    code, out, err = run(["inspect", "custom", "--data-file", str(data), "--columns", str(columns), "--json",
                          "--no-cache"], capsys)
    judge(outcomes, code, err, ["events.csv"], lambda: json.loads(out)["samples"] == len(rows))


COLUMN_KEYS = ["user", "item", "timestamp", "label", "rating", "threshold", "categorical", "multi_hot", "separator",
               "colums", "users", ""]
TOML_VALUE = st.one_of(st.text(max_size=6), st.integers(-3, 3), st.floats(allow_nan=False), st.booleans(),
                       st.lists(st.text(max_size=4), max_size=3), st.sampled_from(["device", "tags", "ts", "clicked"]))


@CASES
@given(table=st.sampled_from(["columns", "colums", "column"]),
       entries=st.dictionaries(st.sampled_from(COLUMN_KEYS), TOML_VALUE, max_size=4))
def test_columns_file_with_odd_entries(tmp_path, capsys, outcomes, table, entries):
    data = tmp_path / "events.csv"
    data.write_text("\n".join([CUSTOM_HEADER.replace("user_id", "user").replace("item_id", "item")
                               .replace("ts", "timestamp").replace("clicked", "label"), *CUSTOM_ROWS]) + "\n")
    columns = tmp_path / "columns.toml"
    columns.write_text(tomli_w.dumps({table: entries}))
    code, out, err = run(["inspect", "custom", "--data-file", str(data), "--columns", str(columns), "--json",
                          "--no-cache"], capsys)
    judge(outcomes, code, err, ["columns.toml", "events.csv"], lambda: json.loads(out)["samples"] == len(CUSTOM_ROWS))


SETTINGS = ["seeds", "split", "new_users", "models", "embedding_dim", "deepfm_hidden", "dropout", "ablations",
            "meta_epochs", "unknown"]
NESTED = {"pretrain": ["epochs", "batch_size", "patience", "validation_fraction", "adam_lr"],
          "meta": ["epochs", "users_per_episode", "inner_steps", "inner_lr", "stop_on", "selector_hidden",
                   "max_episodes", "validation_users"],
          "sample_level": ["epochs", "hidden"]}
SETTING_VALUE = st.one_of(st.integers(-3, 3), st.sampled_from([0.0, 0.5, 1.0, 1.5, -0.1, 2.0, 1e-3]),
                          st.booleans(), st.sampled_from(["random", "held-out-rows", "x", "", "LR"]),
                          st.lists(st.one_of(st.integers(-1, 4), st.sampled_from(["LR", "FM", "x:Y", "LR"])),
                                   max_size=3))


@st.composite
def configurations(draw):
    document = draw(st.dictionaries(st.sampled_from(SETTINGS), SETTING_VALUE, max_size=3))
    for table, keys in NESTED.items():
        if draw(st.booleans()):
            document[table] = draw(st.dictionaries(st.sampled_from(keys), SETTING_VALUE, max_size=3))
    return document


@settings(max_examples=200, **QUIET)
@given(document=configurations())
def test_configuration_values_are_range_checked_on_read(tmp_path, outcomes, document):
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(document))
    try:
        config = load_config("ml-latest-small", path)
    except ConfigError as err:
        assert "run.toml" in str(err) and "\n" not in str(err)
        outcomes["clean error"] += 1
        return
    validate(config, "check")  # every value the run will use is within its declared range
    written = tomllib.loads(config.to_toml())
    assert written["models"] == document.get("models", written["models"])
    outcomes["correct result"] += 1


def test_out_of_range_setting_exits_2_before_any_work(tmp_path, capsys, outcomes):
    for text in ("[meta]\nepochs = -3\n", "[pretrain]\nbatch_size = 0\n", "seeds = 0\n", "models = []\n",
                 "dropout = 2\n", "[meta]\nepochs = 1.5\n", 'models = ["LR", "Nope"]\n'):
        (tmp_path / "run.toml").write_text(text)
        code, _, err = run(["reproduce", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "out")],
                           capsys)
        judge(outcomes, code, err, ["run.toml"], lambda: False)
        assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    import torch

    from metaselector import MetaSelector, load_data

    torch.set_num_threads(1)
    data = load_data("movielens-1m", FIXTURES / "ml-1m")
    config = {"embedding_dim": 4, "deepfm_hidden": [8], "pretrain": {"epochs": 1, "batch_size": 256},
              "meta": {"epochs": 1, "selector_hidden": [8]}}
    folder = tmp_path_factory.mktemp("saved") / "model"
    MetaSelector(config=config).fit(data).save(folder)
    return folder


MANIFEST_KEYS = ["format_version", "files", "config", "base_models", "seed", "dataset", "validation"]


@CASES
@given(key=st.sampled_from(MANIFEST_KEYS),
       value=st.one_of(st.none(), st.integers(-2, 5), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                       st.dictionaries(st.sampled_from(["models", "embedding_dim", "x"]), st.integers(0, 3),
                                       max_size=2)),
       file_damage=st.sampled_from([None, "truncate", "flip", "delete"]),
       target=st.sampled_from(["encoder.json", "weights.safetensors", "manifest.json"]))
def test_damaged_or_edited_saved_model(tmp_path, outcomes, saved_model, key, value, file_damage, target):
    from metaselector import MetaSelector

    folder = tmp_path / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(saved_model, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edited = {**manifest, key: value}
    (folder / "manifest.json").write_text(json.dumps(edited))
    path = folder / target
    if file_damage == "truncate":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    elif file_damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    elif file_damage == "delete":
        path.unlink()
    try:
        model = MetaSelector.load(folder)
    except InputError as err:
        assert any(name in str(err) for name in ("manifest.json", "encoder.json", "weights.safetensors"))
        outcomes["clean error"] += 1
        return
    except ConfigError as err:
        assert "manifest.json" in str(err)
        outcomes["clean error"] += 1
        return
    # loaded: only edits that change nothing the model is built from may get here
    original = MetaSelector.load(saved_model)
    history = [{"user": "1", "item": "1193", "rating": 5, "timestamp": 978300760}]
    candidates = [{"user": "1", "item": "661", "timestamp": 978302109}]
    assert (model.predict_proba(candidates, history) == original.predict_proba(candidates, history)).all()
    outcomes["correct result"] += 1


# ---- the command line's last bad inputs: not-UTF-8 files, odd cache homes, plug-ins that raise,
# data with one usable user ----------------------------------------------------------------------

@CASES
@given(prefix=st.sampled_from([b"", b"[columns]\nuser = \"", b"# ok\n"]),
       junk=st.binary(min_size=1, max_size=40).filter(lambda b: _not_utf8(b)))
def test_a_columns_or_config_file_that_is_not_utf8_text(tmp_path, capsys, outcomes, prefix, junk):
    data = tmp_path / "events.csv"
    data.write_text("\n".join([CUSTOM_HEADER, *CUSTOM_ROWS]) + "\n")
    columns = tmp_path / "columns.toml"
    columns.write_bytes(prefix + junk)
    code, _, err = run(["inspect", "custom", "--data-file", str(data), "--columns", str(columns), "--json"], capsys)
    judge(outcomes, code, err, ["columns.toml"], lambda: False)
    config = tmp_path / "config.toml"
    config.write_bytes(prefix.replace(b"[columns]\nuser", b"dataset") + junk)
    code, _, err = run(["reproduce", "--config", str(config), "--out", str(tmp_path / "out")], capsys)
    judge(outcomes, code, err, ["config.toml"], lambda: False)
    assert not (tmp_path / "out").exists()


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_metaselector_home_that_is_a_file(tmp_path, capsys, outcomes, monkeypatch, where):
    (tmp_path / "home").write_text("not a folder")
    home = tmp_path / "home" if where == "file" else tmp_path / "home" / "cache"
    monkeypatch.setenv("METASELECTOR_HOME", str(home))
    for args in (["inspect", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"), "--json"],
                 ["download", "movielens-1m"]):
        code, _, err = run(args, capsys)
        judge(outcomes, code, err, [f"METASELECTOR_HOME={home}"], lambda: False)
    assert (tmp_path / "home").read_text() == "not a folder"


BROKEN_MODEL = '''
from metaselector.models.base import BaseModel


class Broken(BaseModel):
    table_names = ()

    def __init__(self, layout, settings):
        super().__init__(layout, settings)
        raise {error}

    def forward(self, batch):
        raise AssertionError("never called")
'''


@pytest.mark.parametrize("error", ['ValueError("embedding size must be even")', "ZeroDivisionError()",
                                   'RuntimeError("x" * 5000)', "KeyError('layout')"])
@pytest.mark.parametrize("command", ["train", "reproduce"])
def test_a_plugin_model_whose_constructor_raises(tmp_path, capsys, outcomes, error, command):
    (tmp_path / "broken.py").write_text(BROKEN_MODEL.format(error=error))
    config = tmp_path / "config.toml"
    name = f"{tmp_path / 'broken.py'}:Broken"
    config.write_text(tomli_w.dumps({"models": ["LR", name], "pretrain": {"epochs": 1}}))
    out = tmp_path / "out"
    code, _, err = run([command, "--dataset", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"), "--config",
                        str(config), "--out", str(out), "--quiet", *(["--seeds", "1"] if command == "reproduce"
                                                                      else [])], capsys)
    judge(outcomes, code, err, [f"model '{name}': its constructor raised {error.split('(')[0]}"], lambda: False)
    assert not (out / "manifest.json").exists() and not (out / "results.json").exists()


@CASES
@given(sizes=st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=4).filter(
    lambda s: sum(n >= 4 for n in s) <= 1), command=st.sampled_from(["train", "reproduce"]))
def test_custom_data_with_one_usable_user(tmp_path, capsys, outcomes, sizes, command):
    """One user (or one left after dropping those too small to split) is refused before the
    output folder is touched: MetaSelector learns across users."""
    rows = [f"{u},{i},{1000 + i},{i % 2},ab,z" for u, n in enumerate(sizes, start=1) for i in range(1, n + 1)]
    data = tmp_path / "events.csv"
    data.write_text("\n".join([CUSTOM_HEADER, *rows]) + "\n")
    columns = tmp_path / "columns.toml"
    columns.write_text('[columns]\nuser = "user_id"\nitem = "item_id"\ntimestamp = "ts"\nlabel = "clicked"\n')
    out = tmp_path / "out"
    code, _, err = run([command, "--dataset", "custom", "--data-file", str(data), "--columns", str(columns),
                        "--out", str(out), "--quiet"], capsys)
    judge(outcomes, code, err, ["dataset 'custom'", "events.csv"], lambda: False)
    assert not out.exists()
