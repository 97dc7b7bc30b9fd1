"""The paper row runs Algorithm 1 with section 5.3's settings; every other setting of a run is
listed as a deviation, computed from one table of the paper's values."""

import json

import numpy as np
import pytest
import torch

from metaselector.config import RunConfig, preset
from metaselector.evaluation.diagnostics import selector_diagnostics
from metaselector.evaluation.fidelity import Fidelity, discarded_section
from metaselector.experiment.paper import deviations, paper_meta, resolved_meta
from metaselector.pipeline import reproduce
from metaselector.settings import merge

TINY = {"embedding_dim": 4, "deepfm_hidden": [8], "seeds": 1, "pretrain": {"epochs": 1},
        "meta": {"epochs": 1, "selector_hidden": [8]}, "sample_level": {"epochs": 1, "hidden": [8]}}


@pytest.mark.parametrize("dataset", ["ml-latest-small", "amazon-electronics"])
def test_paper_row_settings_are_section_5_3(dataset):
    config = preset(dataset)
    paper = resolved_meta(paper_meta(config.meta))
    beta = config.meta.inner_lr / 10
    assert paper["model_loss"] == "mixture" and paper["model_start"] == "pretrained"
    assert paper["outer_lr"] == paper["selector_outer_lr"] == paper["alpha_outer_lr"] == pytest.approx(beta)
    assert paper["selector_hidden"] == [200, 200, 200] and not paper["selector_uses_predictions"]
    assert paper["inner_steps"] == 1 and paper["users_per_episode"] == 10 and paper["learn_inner_lr"]
    assert config.meta.inner_lr == (1e-4 if dataset == "amazon-electronics" else 1e-3)
    # the default configuration deviates from the paper only in the validated row's extensions
    found = deviations(config, {"paper row": paper_meta(config.meta), "validated row": config.meta})
    assert found and all(d.rows == "validated row" for d in found)
    assert {"meta.model_loss", "meta.model_start", "meta.selector_outer_lr"} <= {d.setting for d in found}
    # the validated selector reads the user's profile through its stacking start: listed as such
    profile = next(d for d in found if d.setting == "meta.selector_user_profile")
    assert profile.value is True and profile.paper is False and "profile-stacking" in profile.source


def test_a_changed_setting_is_listed_for_every_row_it_touches():
    config = RunConfig.from_dict(merge(preset("movielens-1m").to_dict(),
                                       {"embedding_dim": 16, "meta": {"inner_steps": 2}}))
    found = {d.setting: d for d in deviations(config, {"paper row": paper_meta(config.meta)})}
    assert found["embedding_dim"].value == 16 and found["embedding_dim"].paper == 10
    assert found["embedding_dim"].rows == "every row"
    assert found["meta.inner_steps"].rows == "paper row" and found["meta.inner_steps"].paper == 1


def test_selector_kind_reads_what_the_weights_do():
    rng = np.random.default_rng(0)
    probabilities, labels = rng.random((40, 2)), rng.integers(0, 2, 40).astype(float)
    same = [np.tile([0.3, 0.7], (10, 1)) for _ in range(4)]
    d = selector_diagnostics(["A", "B"], same, np.array([5, 30, 60, 150]), probabilities, labels)
    assert d["selector_kind"] == "global-blend" and d["user_weight_spread"]["A"] == pytest.approx(0)
    assert d["mean_weight"] == pytest.approx({"A": 0.3, "B": 0.7})
    varied = [np.tile([w, 1 - w], (10, 1)) for w in (0.1, 0.4, 0.6, 0.9)]
    d = selector_diagnostics(["A", "B"], varied, np.array([5, 30, 60, 150]), probabilities, labels)
    assert d["selector_kind"] == "learned" and d["user_weight_spread"]["A"] > 0.2
    assert d["by_activity"]["mean_weight"]["A"][:4] == pytest.approx([0.1, 0.4, 0.6, 0.9])
    assert d["by_activity"]["users"][:4] == [1, 1, 1, 1]


def test_a_kept_start_says_where_the_selector_rate_factor_selects_per_user():
    """Best epoch 0 with [meta] selector_rate_scales: the report says on which seeds a factor above
    1 made the selector's own per-user step the row's difference from its start, and on which the
    learned rates (the start's weights) were kept."""
    info = {"variant": "extension", "best_epoch": [0, 0, 2], "start": "Per-user adaptation + Global Blend",
            "selector_rate_factor": [20000.0, 1.0, 5000.0]}
    text = "\n".join(discarded_section(Fidelity([], {}, [], {"MetaSelector (validated)": info}), [0, 1, 2]))
    line = next(x for x in text.splitlines() if x.startswith("- **MetaSelector (validated)**"))
    assert "best epoch 0 on seeds 0, 1;" in line
    assert "On seed 0 (x20000) the selector's rates were scaled" in line
    assert "On seed 1 the learned rates were kept (factor 1): the row's weights are its start's" in line
    assert "x5000" not in line  # seed 2 kept a meta-trained epoch: not a kept start
    plain = dict(info, selector_rate_factor=None)
    text = "\n".join(discarded_section(Fidelity([], {}, [], {"MetaSelector (validated)": plain}), [0, 1, 2]))
    assert "rates" not in text


def test_default_reproduce_reports_the_paper_row_and_its_deviations(ml1m_fixture, tmp_path):
    torch.set_num_threads(1)
    config = RunConfig.from_dict(merge({**TINY, "dataset": "movielens-1m"}, {"ablations": False}))
    reproduce(config, ml1m_fixture, tmp_path, progress=False, log=lambda m: None)
    results = json.loads((tmp_path / "results.json").read_text())
    paper = results["rows"]["MetaSelector (paper)"]
    assert paper["variant"] == "paper" and results["rows"]["MetaSelector (validated)"]["variant"] == "extension"
    settings = paper["settings"]
    assert settings["model_loss"] == "mixture" and settings["model_start"] == "pretrained"
    for rate in ("outer_lr", "selector_outer_lr", "alpha_outer_lr"):
        assert settings[rate] == pytest.approx(settings["inner_lr"] / 10)
    listed = {d["setting"] for d in results["deviations"]}
    assert {"embedding_dim", "meta.selector_hidden", "meta.model_loss"} <= listed
    report = (tmp_path / "report.md").read_text()
    assert "## Deviations from the paper" in report and "`meta.model_loss`" in report
    assert "MetaSelector (validated) †" in report
    assert set(results["selector_diagnostics"]) == {"MetaSelector (paper)", "MetaSelector (validated)"}
    # the validated row chose its selector rate factor among the configured ones; the paper row has none
    scales = results["rows"]["MetaSelector (validated)"]["settings"]["selector_rate_scales"]
    assert results["rows"]["MetaSelector (validated)"]["selector_rate_factor"][0] in scales
    assert "selector_rate_factor" not in paper
    assert "## Paired per-user test: MetaSelector (paper)" in report
