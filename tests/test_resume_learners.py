"""Every learner of the one training loop (pretraining, meta-training, Simplified, the sample-level
selector) resumes to the same result: the process dies right after writing its state at an
epoch boundary (what SIGKILL then leaves), the same call continues from that state, and the
result equals an uninterrupted run bit for bit. `tests/test_resume.py` kills `train` itself."""

import gc
import warnings

import numpy as np
import pytest
import torch

from metaselector.data.splits import split_users
from metaselector.models import ModelSettings, build_model
from metaselector.selection.meta_trainer import MetaTrainer
from metaselector.selection.sample_level import fit_sample_selector
from metaselector.selection.selector import Selector
from metaselector.selection.simplified import SimplifiedSelector
from metaselector.selection.tasks import tasks_for
from metaselector.training.pretrain import PretrainSettings, pretrain
from metaselector.training.state import StateFile
from metaselector.training.tensors import TensorData


class Killed(Exception):
    """The process died right after a state save."""


def _dies_after(monkeypatch, saves: int) -> None:
    count = {"n": 0}
    save = StateFile.save

    def dying_save(self, state):
        save(self, state)
        count["n"] += 1
        if count["n"] == saves:
            raise Killed

    monkeypatch.setattr(StateFile, "save", dying_save)


def _resumed(monkeypatch, tmp_path, run):
    """run(state) uninterrupted, and interrupted after its 2nd epoch then run again."""
    whole = run(StateFile(tmp_path / "whole.pt"))
    with monkeypatch.context() as patch:
        _dies_after(patch, 2)
        with pytest.raises(Killed):
            run(StateFile(tmp_path / "killed.pt"))
    assert (tmp_path / "killed.pt").is_file()
    return whole, run(StateFile(tmp_path / "killed.pt"))


def _equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def parts(ml1m_fixture):
    tensors = TensorData.from_encoded(ml1m_fixture)
    split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
    return ml1m_fixture, tensors, split, tasks_for(ml1m_fixture.users, split.support, split.query)


def test_pretraining_resumes(monkeypatch, tmp_path, parts):
    data, tensors, split, _ = parts
    settings = PretrainSettings(epochs=5, patience=5, batch_size=128)

    def run(state):
        torch.manual_seed(0)  # initial weights and the dropout stream
        model = build_model("DeepFM", data.layout, ModelSettings(embedding_dim=4, hidden=[8], dropout=0.3))
        result = pretrain(model, tensors, split.support, settings, seed=1, state=state)
        return {**model.state_dict(), "best_epoch": torch.tensor(result.best_epoch)}

    _equal(*_resumed(monkeypatch, tmp_path, run))


def test_meta_training_resumes(monkeypatch, tmp_path, parts, make_module):
    data, tensors, _, tasks = parts
    tensors = TensorData(tensors.ids, tensors.weights.double(), tensors.labels.double(), tensors.users)

    def run(state):
        module = make_module()
        module.settings.epochs, module.settings.patience, module.settings.users_per_episode = 4, 4, 3
        history = MetaTrainer(module).fit(tensors, tasks[:9], tasks[9:12], seed=3, progress=False, state=state)
        return {**module.state_dict(), "best_epoch": torch.tensor(history.best_epoch)}

    _equal(*_resumed(monkeypatch, tmp_path, run))


def test_simplified_resumes(monkeypatch, tmp_path, parts):
    data, tensors, _, tasks = parts
    base = torch.as_tensor(np.random.default_rng(0).uniform(0.05, 0.95, (len(data.labels), 4)))

    def run(state):
        torch.manual_seed(0)
        selector = Selector(data.layout, ModelSettings(4, [8]), 4)
        model = SimplifiedSelector(selector, base, lr=0.01)
        history = model.fit(tensors, tasks[:9], tasks[9:12], users_per_episode=3, epochs=4, patience=4, seed=2,
                            progress=False, state=state)
        return {**selector.state_dict(), "best_epoch": torch.tensor(history.best_epoch)}

    _equal(*_resumed(monkeypatch, tmp_path, run))


def test_sample_level_selector_resumes(monkeypatch, tmp_path, parts):
    data, tensors, split, _ = parts
    base = torch.as_tensor(np.random.default_rng(0).uniform(0.05, 0.95, (len(data.labels), 4)))

    def run(state):
        torch.manual_seed(0)
        selector = Selector(data.layout, ModelSettings(4, [8]), 4, uses_predictions=True)
        notes = fit_sample_selector(selector, tensors, split.query, base, epochs=4, lr=0.01, batch_size=64, seed=5,
                                    progress=False, state=state)
        return {**selector.state_dict(), "best_epoch": torch.tensor(notes["best_epoch"])}

    _equal(*_resumed(monkeypatch, tmp_path, run))


def test_loading_a_saved_model_builds_no_optimizer(tmp_path, ml1m_fixture):
    import metaselector as ms

    config = {"embedding_dim": 4, "deepfm_hidden": [8], "pretrain": {"epochs": 1},
              "meta": {"epochs": 1, "selector_hidden": [8]}}
    ms.MetaSelector(config=config).fit(ml1m_fixture).save(tmp_path / "model")
    before = {id(o) for o in _optimizers()}
    model = ms.MetaSelector.load(tmp_path / "model")
    created = [o for o in _optimizers() if id(o) not in before]
    assert model.module_ is not None and created == []
    # the check can see an optimizer when one exists
    probe = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    assert any(o is probe for o in _optimizers())


def _optimizers() -> list:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on some deprecated torch objects warns
        warnings.simplefilter("ignore")
        return [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)]
