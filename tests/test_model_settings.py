"""Per-model settings: [model_settings.<model>] tables that fall back to the shared settings."""

import tomllib
from importlib import resources

import pytest

from metaselector.config import RunConfig, load_config
from metaselector.errors import ConfigError
from metaselector.experiment.context import model_settings, pretrain_settings
from metaselector.experiment.paper import deviations, paper_meta
from metaselector.models import build_model


def test_a_models_own_table_overrides_only_what_it_sets(tmp_path):
    (tmp_path / "c.toml").write_text('models = ["LR", "FM", "MF"]\n[pretrain]\nadam_lr = 0.002\n'
                                     '[model_settings.MF]\nembedding_dim = 16\nl2_embedding = 0.03\n'
                                     '[model_settings.DIN]\nhidden = [64]\n')  # DIN is not in the run: ignored
    config = load_config("movielens-1m", tmp_path / "c.toml")
    mf, fm = model_settings(config, "MF"), model_settings(config, "FM")
    assert (mf.embedding_dim, fm.embedding_dim) == (16, 10) and mf.hidden == fm.hidden == [256, 256, 256]
    assert pretrain_settings(config, "MF").l2_embedding == 0.03 and pretrain_settings(config, "FM").l2_embedding == 1e-6
    assert pretrain_settings(config, "MF").adam_lr == pretrain_settings(config, "FM").adam_lr == 0.002
    written = config.to_toml()
    mf_table = written.split("[model_settings.MF]")[1].split("[model_settings.DIN]")[0]
    assert "embedding_dim = 16" in mf_table and "hidden" not in mf_table


def test_the_built_model_has_its_own_sizes(ml1m_fixture):
    config = RunConfig.from_dict({"models": ["FM", "MF"], "model_settings": {"MF": {"embedding_dim": 7}}})
    assert build_model("MF", ml1m_fixture.layout, model_settings(config, "MF")).embedding.shape[1] == 7
    assert build_model("FM", ml1m_fixture.layout, model_settings(config, "FM")).embedding.shape[1] == 10


@pytest.mark.parametrize("table,needle", [({"MF": {"embedding_dim": 0}}, "model_settings.MF.embedding_dim"),
                                          ({"MF": {"colour": 1}}, "unknown setting 'model_settings.MF.colour'"),
                                          ({"MF": 3}, "[model_settings.MF] must be a table"),
                                          ({"MF": {"dropout": 1.5}}, "model_settings.MF.dropout")])
def test_bad_model_tables_are_refused_on_read(table, needle):
    with pytest.raises(ConfigError) as raised:
        RunConfig.from_dict({"model_settings": table})
    assert needle in str(raised.value)


def test_an_override_of_a_paper_model_is_a_deviation():
    config = RunConfig.from_dict({"dataset": "movielens-1m", "model_settings": {"FM": {"embedding_dim": 16},
                                                                               "MF": {"embedding_dim": 16}}})
    found = {d.setting: d for d in deviations(config, {"paper": paper_meta(config.meta)})}
    assert found["model_settings.FM.embedding_dim"].paper == 10
    assert "model_settings.MF.embedding_dim" not in found  # MF is not one of the paper's models (nor in the run)


def test_a_paper_model_set_to_the_papers_own_value_is_no_deviation():
    config = RunConfig.from_dict({"dataset": "movielens-1m", "model_settings": {"FM": {"embedding_dim": 10,
                                                                                      "adam_lr": 0.002}}})
    found = {d.setting for d in deviations(config, {"paper": paper_meta(config.meta)})}
    assert "model_settings.FM.embedding_dim" not in found  # 10 is section 5.2's value
    assert "model_settings.FM.adam_lr" in found  # the paper states no rate for it: listed


def test_the_extended_preset_lies_over_the_datasets_and_under_the_config_file(tmp_path):
    """`--preset extended`: seven models, each with the tables the shipped preset holds, on top of the
    dataset's preset (the paper row's settings untouched), below a config file and the options."""
    shipped = tomllib.loads((resources.files("metaselector") / "presets" / "extended.toml").read_text())
    plain = load_config("movielens-1m", None)
    extended = load_config("movielens-1m", None, preset_name="extended")
    assert list(extended.models) == shipped["models"] == ["LR", "FM", "FFM", "DeepFM", "MF", "DIN", "RatingMF"]
    assert list(plain.models) == ["LR", "FM", "FFM", "DeepFM"]
    for model, table in shipped["model_settings"].items():
        sizes, training = model_settings(extended, model), pretrain_settings(extended, model)
        for key, value in table.items():
            assert getattr(sizes if hasattr(sizes, key) else training, key) == value, (model, key)
    assert model_settings(extended, "FM") == model_settings(plain, "FM")  # FM kept the paper's settings
    assert paper_meta(extended.meta) == paper_meta(plain.meta) and extended.pretrain == plain.pretrain
    listed = {d.setting for d in deviations(extended, {"paper": paper_meta(extended.meta)})}
    assert "model_settings.FFM.embedding_dim" in listed and not any(s.startswith("model_settings.FM.") for s in listed)

    (tmp_path / "c.toml").write_text('models = ["FFM", "MF"]\n[model_settings.MF]\nembedding_dim = 8\n')
    mine = load_config("movielens-1m", tmp_path / "c.toml", {"seeds": 1}, preset_name="extended")
    assert list(mine.models) == ["FFM", "MF"] and mine.seeds == 1
    assert model_settings(mine, "MF").embedding_dim == 8  # the file wins where it speaks
    assert pretrain_settings(mine, "MF").l2_embedding == shipped["model_settings"]["MF"]["l2_embedding"]
    with pytest.raises(ConfigError, match="preset 'wide': unknown"):
        load_config("movielens-1m", None, preset_name="wide")
