"""User-level selector inputs: a profile from the user's support rows only, standardised with
the meta-training users' statistics, the same batched (padded) as alone, saved with the model,
and never given to the paper row."""

import numpy as np
import pytest
import torch

import metaselector as ms
from metaselector.config import RunConfig
from metaselector.experiment.paper import paper_meta
from metaselector.models import ModelSettings, build_model
from metaselector.selection.ensemble import Ensemble
from metaselector.selection.meta_settings import MetaSettings
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.selector import Selector
from metaselector.selection.user_profile import FEATURES, UserProfile


def _module_with_profile(layout, tensors, tasks):
    torch.manual_seed(0)
    settings = ModelSettings(embedding_dim=4, hidden=[8], dropout=0.0, init_std=0.3)
    models = {n: build_model(n, layout, settings) for n in ["FM", "MF"]}
    selector = Selector(layout, ModelSettings(4, [8]), 2, uses_predictions=True, profile_features=len(FEATURES))
    with torch.no_grad():
        selector.deep[-1].weight.normal_(0, 0.5)
    profile = UserProfile.fit(layout, tensors.ids, tensors.labels, [t.support for t in tasks])
    return MetaSGDEnsemble(Ensemble(models, selector).double(), MetaSettings(inner_lr=0.05), profile=profile)


def test_profile_is_standardised_over_the_fitting_users(ml1m_fixture, make_episode):
    tensors, tasks = make_episode(n_users=20)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors.ids, tensors.labels, [t.support for t in tasks])
    rows = torch.stack([profile.features(profile.popularity[tensors.ids[torch.as_tensor(t.support),
                                                                            profile.item_slot].long()],
                                         tensors.labels[torch.as_tensor(t.support)].float()) for t in tasks])
    np.testing.assert_allclose(rows.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(rows.std(0).numpy(), 1.0, atol=1e-4)
    # padding rows (mask 0) change nothing
    t = tasks[0]
    pop = profile.popularity[tensors.ids[torch.as_tensor(t.support), profile.item_slot].long()]
    labels = tensors.labels[torch.as_tensor(t.support)].float()
    padded = profile.features(torch.cat([pop, torch.full((5,), 9.0)]), torch.cat([labels, torch.ones(5)]),
                              torch.cat([torch.ones(len(pop)), torch.zeros(5)]))
    torch.testing.assert_close(padded, profile.features(pop, labels))


def test_batched_prediction_with_profile_equals_each_user_alone(ml1m_fixture, make_episode):
    tensors, tasks = make_episode(n_users=6)
    module = _module_with_profile(ml1m_fixture.layout, tensors, tasks)
    eval_rows = [t.query for t in tasks]
    batched = module.predict(tensors, tasks, eval_rows, with_weights=True)
    profiles = []
    for task, rows, (got, weights) in zip(tasks, eval_rows, batched, strict=True):
        params = {n: p.detach().clone() for n, p in module.params.items()}
        s_batch, s_labels = tensors.batch(task.support)
        profile = module.profile.features(module.profile.popularity[s_batch.ids[:, module.profile.item_slot].long()],
                                          s_labels)
        profiles.append(profile)
        adapted = module.adapt(params, module.dense_alpha(), s_batch, s_labels, create_graph=False, profile=profile)
        expected, expected_weights = module.ensemble.mixture(adapted, tensors.batch(rows)[0], profile=profile)
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(weights, expected_weights.detach().numpy(), rtol=1e-9, atol=1e-12)
    # the profile reaches the weights: the same row, other profiles, other weights
    batch = tensors.batch(eval_rows[0][:1])[0]
    params = dict(module.params)
    first = module.ensemble.mixture(params, batch, profile=profiles[0])[1]
    other = module.ensemble.mixture(params, batch, profile=profiles[0] + 1.0)[1]
    assert not torch.allclose(first, other)


def test_the_paper_row_never_reads_the_profile():
    meta = RunConfig.from_dict({"meta": {"selector_user_profile": True}}, where="test").meta
    assert meta.selector_user_profile and not paper_meta(meta).selector_user_profile


@pytest.mark.slow
def test_saved_model_with_profile_scores_as_trained(tmp_path, events):
    from tests.conftest import FIXTURES, SERVE_TINY

    data = ms.load_data("movielens-1m", FIXTURES / "ml-1m")
    config = {**SERVE_TINY, "meta": {**SERVE_TINY["meta"], "selector_user_profile": True}}
    model = ms.MetaSelector(config=config).fit(data)
    assert model.module_.profile is not None
    model.save(tmp_path / "m")
    loaded = ms.MetaSelector.load(tmp_path / "m")
    user = events.user.unique()[0]
    rows = events[events.user == user]
    request = (rows.iloc[:15], rows.iloc[15:18].drop(columns="rating"))
    before, after = model.score_users([request])[0], loaded.score_users([request])[0]
    np.testing.assert_allclose(after.probabilities, before.probabilities, rtol=1e-6)
    np.testing.assert_allclose(after.weights, before.weights, rtol=1e-6)
    torch.testing.assert_close(loaded.module_.profile.popularity, model.module_.profile.popularity)
