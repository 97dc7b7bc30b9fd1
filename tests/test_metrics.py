import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from metaselector.evaluation import metrics
from metaselector.selection import oracles


def test_auc_and_logloss_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert metrics.auc(y, p) == pytest.approx(roc_auc_score(y, p))
    assert metrics.logloss(y, p) == pytest.approx(log_loss(y, p))


def test_logloss_is_finite_at_zero_and_one():
    value = metrics.logloss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert np.isfinite(value) and value == pytest.approx(-np.log(1e-7), rel=1e-6)


def test_relimpr_equation_7():
    assert metrics.relimpr(0.8047, 0.7957) == pytest.approx(((0.3047 / 0.2957) - 1) * 100)
    assert metrics.relimpr(0.7957, 0.7957) == 0


def test_gauc_and_per_user_logloss_by_hand():
    users = np.array([0, 0, 0, 1, 1, 2])
    y = np.array([1, 0, 1, 1, 0, 1])
    p = np.array([0.9, 0.2, 0.1, 0.3, 0.6, 0.5])
    # user 0: pairs (0.9>0.2) yes, (0.1>0.2) no -> 0.5; user 1: 0.3<0.6 -> 0; user 2 has one label
    assert metrics.gauc(users, y, p) == pytest.approx(0.25)
    codes, losses = metrics.per_user_logloss(users, y, p)
    assert codes.tolist() == [0, 1, 2]
    assert losses[2] == pytest.approx(-np.log(0.5))
    assert losses[0] == pytest.approx(-(np.log(0.9) + np.log(0.8) + np.log(0.1)) / 3)


def test_oracles_pick_the_true_minimum():
    rng = np.random.default_rng(1)
    probs = rng.random((200, 4))
    y = rng.integers(0, 2, 200)
    users = rng.integers(0, 10, 200)
    losses = metrics.sample_losses(y[:, None], probs)
    chosen = oracles.perfect_sample_level(probs, y)
    np.testing.assert_allclose(metrics.sample_losses(y, chosen), losses.min(axis=1))
    codes, best = oracles.best_model_per_user(probs, y, users)
    for u, k in zip(codes, best, strict=True):
        mine = losses[users == u].mean(axis=0)
        assert mine[k] == pytest.approx(mine.min())
    per_user = metrics.per_user_logloss(users, y, oracles.perfect_user_level(probs, y, users))[1]
    for k in range(4):
        assert np.all(per_user <= metrics.per_user_logloss(users, y, probs[:, k])[1] + 1e-12)


def test_global_mixture_prefers_the_better_model():
    import torch

    from metaselector.selection.selector import global_mixture_logits

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.8 + 0.1 + rng.normal(0, 0.05, 400), 0.01, 0.99)
    noise = rng.random(400)
    weights = torch.softmax(global_mixture_logits(torch.tensor(np.stack([noise, good], 1)), torch.tensor(y)), 0)
    assert weights[1] > 0.9 and abs(float(weights.sum()) - 1) < 1e-6


def test_gauc_matches_per_user_sklearn_with_ties():
    rng = np.random.default_rng(3)
    users = rng.integers(0, 40, 2000)
    y = rng.integers(0, 2, 2000)
    p = np.round(rng.random(2000), 1)  # many ties
    expected = [roc_auc_score(y[users == u], p[users == u]) for u in np.unique(users)
                if 0 < y[users == u].sum() < (users == u).sum()]
    assert metrics.gauc(users, y, p) == pytest.approx(np.mean(expected), rel=1e-12)


def test_split_half_oracle_never_uses_a_rows_own_label():
    from metaselector.selection.oracles import split_half_user_level

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 6)
    labels = rng.integers(0, 2, len(users)).astype(float)
    p = rng.uniform(0.05, 0.95, (len(users), 3))
    chosen = split_half_user_level(p, labels, users, seed=1)
    flipped = labels.copy()
    flipped[0] = 1 - flipped[0]  # a row's own label cannot change its own prediction
    assert split_half_user_level(p, flipped, users, seed=1)[0] == chosen[0]
    # and it is never better than the full user-level oracle on LogLoss
    from metaselector.evaluation.metrics import logloss
    from metaselector.selection.oracles import perfect_user_level

    assert logloss(labels, chosen) >= logloss(labels, perfect_user_level(p, labels, users))
