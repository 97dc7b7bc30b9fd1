"""User-level selector inputs: a profile from the user's support rows only, standardised with
the meta-training users' statistics, the same batched (padded) as alone, saved with the model,
and never given to the paper row."""

import numpy as np
import pytest
import torch

import metaselector as ms
from metaselector.config import RunConfig
from metaselector.experiment.paper import paper_meta, start_description
from metaselector.models import ModelSettings, build_model
from metaselector.selection.ensemble import Ensemble
from metaselector.selection.meta_settings import MetaSettings
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.selector import Selector, start_from_mixture
from metaselector.selection.user_profile import FEATURES, UserProfile
from metaselector.training.tensors import TensorData


def _module_with_profile(layout, tensors, tasks):
    torch.manual_seed(0)
    settings = ModelSettings(embedding_dim=4, hidden=[8], dropout=0.0, init_std=0.3)
    models = {n: build_model(n, layout, settings) for n in ["FM", "MF"]}
    selector = Selector(layout, ModelSettings(4, [8]), 2, uses_predictions=True, profile_features=len(FEATURES))
    with torch.no_grad():
        selector.deep[-1].weight.normal_(0, 0.5)
    profile = UserProfile.fit(layout, tensors, [t.support for t in tasks])
    return MetaSGDEnsemble(Ensemble(models, selector).double(), MetaSettings(inner_lr=0.05), profile=profile)


def test_profile_is_standardised_over_the_fitting_users(ml1m_fixture, make_episode):
    tensors, tasks = make_episode(n_users=20)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors, [t.support for t in tasks])
    rows = profile.features(tensors, [t.support for t in tasks])
    assert rows.shape == (20, len(FEATURES))
    np.testing.assert_allclose(rows.mean(0).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(rows.std(0).numpy(), 1.0, atol=1e-4)


def test_profile_features_of_one_user_by_hand(ml1m_fixture, make_episode):
    """Rating mean and spread and the mean gap, shrunk toward the training values, from the raw
    ratings and timestamps of the user's support rows only."""
    tensors, tasks = make_episode(n_users=20)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors, [t.support for t in tasks])
    rows = tasks[0].support
    ratings = ml1m_fixture.ratings[rows].astype(np.float64)
    days = np.diff(np.sort(ml1m_fixture.timestamps[rows])) / 86400
    pooled = np.concatenate([ml1m_fixture.ratings[t.support] for t in tasks]).astype(np.float64)
    k = 5.0
    mean = (ratings.sum() + k * pooled.mean()) / (len(ratings) + k)
    spread = np.sqrt((((ratings - ratings.mean()) ** 2).sum() + k * pooled.var(ddof=1)) / (len(ratings) - 1 + k))
    gap = (days.sum() + k * profile.priors["gap_days"]) / (len(days) + k)
    labels = ml1m_fixture.labels[rows]
    rate = (labels.sum() + k * ml1m_fixture.labels[np.concatenate([t.support for t in tasks])].mean()) / (len(rows) + k)
    raw = profile.raw_features(tensors, [rows])[0].numpy()
    np.testing.assert_allclose(raw[[0, 1, 3, 4, 5]], [np.log1p(len(rows)), rate, mean, spread, np.log1p(gap)],
                               rtol=1e-6)
    # the ratings and times of rows outside the support set change nothing
    other = TensorData(tensors.ids, tensors.weights, tensors.labels, tensors.users, tensors.timestamps.clone(),
                       tensors.ratings.clone())
    outside = np.setdiff1d(np.arange(len(tensors.labels)), rows)
    other.ratings[outside], other.timestamps[outside] = 1.0, 0
    torch.testing.assert_close(profile.raw_features(other, [rows]), profile.raw_features(tensors, [rows]))


def test_a_user_without_ratings_or_times_gets_the_training_values(ml1m_fixture, make_episode):
    """Label-only events (no ratings) and one-event histories still have a defined profile: the
    rating and gap features are the training values the shrinkage pulls toward."""
    tensors, tasks = make_episode(n_users=20)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors, [t.support for t in tasks])
    unrated = TensorData(tensors.ids, tensors.weights, tensors.labels, tensors.users, tensors.timestamps, None)
    raw = profile.raw_features(unrated, [tasks[0].support, tasks[0].support[:1]])
    p = profile.priors
    np.testing.assert_allclose(raw[:, 3].numpy(), p["rating_mean"], rtol=1e-9)
    np.testing.assert_allclose(raw[:, 4].numpy(), np.sqrt(p["rating_variance"]), rtol=1e-9)
    assert float(raw[1, 5]) == pytest.approx(np.log1p(p["gap_days"]))
    assert torch.isfinite(profile.features(unrated, [tasks[0].support[:0]])).all()  # no rows at all


def test_batched_prediction_with_profile_equals_each_user_alone(ml1m_fixture, make_episode):
    tensors, tasks = make_episode(n_users=6)
    module = _module_with_profile(ml1m_fixture.layout, tensors, tasks)
    eval_rows = [t.query for t in tasks]
    batched = module.predict(tensors, tasks, eval_rows, with_weights=True)
    profiles = []
    for task, rows, (got, weights) in zip(tasks, eval_rows, batched, strict=True):
        params = {n: p.detach().clone() for n, p in module.params.items()}
        s_batch, s_labels = tensors.batch(task.support)
        profile = module.profile.features(tensors, [task.support])[0]
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
    np.testing.assert_allclose(after.weights, before.weights, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(loaded.module_.profile.popularity, model.module_.profile.popularity)
    # the history's ratings reach the selector (its rating features): the same events given as
    # 0/1 labels only leave those features at the training values, and the weights move
    labels_only = rows.iloc[:15].assign(label=(rows.iloc[:15].rating >= 4).astype(int)).drop(columns="rating")
    without = loaded.score_users([(labels_only, request[1])])[0]
    # (exactly equal inputs otherwise: labels, times and items are the same; the tiny model's
    # weights sit near 0 and 1, so the change is compared exactly rather than within a tolerance)
    assert not np.array_equal(without.weights, after.weights)
    # the service keeps the ratings of the events it is given (and stores) for the profile
    from metaselector.serving.schemas import labelled

    assert labelled([{"item": "1", "timestamp": 5, "rating": 2.0}], 4.0) == \
        [{"item": "1", "timestamp": 5, "rating": 2.0, "label": 0}]
    assert labelled([{"item": "1", "timestamp": 5, "label": 1}], 4.0)[0]["rating"] is None


def test_a_profile_stacking_start_is_the_stacking_blend_of_the_users_profile(ml1m_fixture, make_episode):
    """selector_start = "profile-stacking": before meta-training the selector's weights are
    softmax(b + W profile) for every row of a user, the feature-weighted stacking blend."""
    tensors, tasks = make_episode(n_users=4)
    torch.manual_seed(0)
    selector = Selector(ml1m_fixture.layout, ModelSettings(4, [8]), 2, uses_predictions=True,
                        profile_features=len(FEATURES)).double()
    b, w = torch.tensor([0.3, -0.2]), torch.randn(2, len(FEATURES))
    start_from_mixture(selector, b, w)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors, [t.support for t in tasks])
    profiles = profile.features(tensors, [t.support for t in tasks]).double()
    for task, f in zip(tasks, profiles, strict=True):
        batch = tensors.batch(task.query)[0]
        weights = selector(batch, torch.rand(len(task.query), 2, dtype=torch.float64), f)
        expected = torch.softmax(b.double() + w.double() @ f, 0).expand(len(task.query), -1)
        torch.testing.assert_close(weights, expected)
    assert not torch.allclose(torch.softmax(w.double() @ profiles[0], 0), torch.softmax(w.double() @ profiles[1], 0))


def test_the_stacking_start_reads_the_profile_and_the_paper_row_never_does():
    meta = RunConfig.from_dict({"meta": {"selector_start": "profile-stacking"}}, where="test").meta
    assert meta.reads_profile and not meta.selector_user_profile
    assert not paper_meta(meta).reads_profile
    assert "Per-user adaptation + Feature-weighted Stacking" in start_description(meta, with_selector=True)


def test_a_rating_out_of_range_counts_as_unrated(ml1m_fixture, make_episode):
    """A rating float32 cannot hold (a loader accepts any finite number) is no rating for the
    profile, which stays finite."""
    from metaselector.data.dataset import rating_array

    ratings = rating_array([4.0, 1e300, "x", None, float("inf"), -2.5])
    assert ratings.dtype == np.float32 and ratings[0] == 4.0 and ratings[5] == -2.5
    assert np.isnan(ratings[1:5]).all()
    tensors, tasks = make_episode(n_users=5)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors, [t.support for t in tasks])
    odd = TensorData(tensors.ids, tensors.weights, tensors.labels, tensors.users, tensors.timestamps,
                     tensors.ratings.clone())
    odd.ratings[tasks[0].support[0]] = float("inf")
    assert torch.isfinite(profile.features(odd, [tasks[0].support])).all()


def test_profiles_of_many_users_at_once_equal_each_user_alone(ml1m_fixture, make_episode):
    """Users are profiled together (sums over each user's rows): every user's profile is the one
    they get alone, whatever their neighbours, including a user with one row and one with none."""
    tensors, tasks = make_episode(n_users=12)
    profile = UserProfile.fit(ml1m_fixture.layout, tensors, [t.support for t in tasks])
    lists = [t.support for t in tasks] + [tasks[0].support[:1], tasks[1].support[:0]]
    together = profile.raw_features(tensors, lists)
    alone = torch.cat([profile.raw_features(tensors, [rows]) for rows in lists])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(together).all()
