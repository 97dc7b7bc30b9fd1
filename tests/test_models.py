import itertools
import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from metaselector.models import ModelSettings, build_model
from metaselector.training.ftrl import FTRL
from metaselector.training.pretrain import PretrainSettings, pretrain
from metaselector.training.tensors import TensorData, predict

NAMES = ["LR", "FM", "FFM", "DeepFM", "MF", "RatingMF", "DIN", "examples.wide_deep:WideDeep"]


def _batch(data, n=64):
    tensors = TensorData.from_encoded(data)
    return tensors.batch(np.arange(n))


@pytest.mark.parametrize("name", NAMES)
def test_forward_is_functional(ml1m_fixture, name):
    torch.manual_seed(0)
    model = build_model(name, ml1m_fixture.layout, ModelSettings(hidden=[16, 16])).eval()
    batch, _ = _batch(ml1m_fixture)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    logits = model(batch)
    assert logits.shape == (64,)
    same = functional_call(model, dict(model.named_parameters()), (batch,))
    torch.testing.assert_close(logits, same)
    shifted = {k: v + 0.05 for k, v in model.named_parameters()}
    assert not torch.allclose(functional_call(model, shifted, (batch,)), logits)
    for k, v in model.state_dict().items():  # forward changed no state
        torch.testing.assert_close(v, before[k])


def test_models_never_share_parameters(ml1m_fixture):
    models = [build_model(n, ml1m_fixture.layout, ModelSettings(hidden=[8])) for n in NAMES[:4] * 2]
    storages = [p.data_ptr() for m in models for p in m.parameters()]
    assert len(storages) == len(set(storages))


def test_ffm_matches_the_pairwise_definition(ml1m_fixture):
    torch.manual_seed(1)
    model = build_model("FFM", ml1m_fixture.layout, ModelSettings()).double()
    with torch.no_grad():
        model.embedding.normal_(0, 0.3)
    batch, _ = _batch(ml1m_fixture, 5)
    batch = type(batch)(batch.ids, batch.weights.double())
    field_of_slot = ml1m_fixture.layout.field_of_slot()
    expected = []
    for n in range(5):
        total = model.bias.item() + sum(model.linear[batch.ids[n, s], 0].item() * batch.weights[n, s].item()
                                        for s in range(batch.ids.shape[1]))
        for s, t in itertools.combinations(range(batch.ids.shape[1]), 2):
            f, g = field_of_slot[s], field_of_slot[t]
            if f == g:
                continue  # pooled per field: pairs inside one multi-hot field are not crossed
            vs = model.embedding[batch.ids[n, s], g] * batch.weights[n, s]
            vt = model.embedding[batch.ids[n, t], f] * batch.weights[n, t]
            total += float((vs @ vt).detach())
        expected.append(total)
    torch.testing.assert_close(model(batch), torch.tensor(expected, dtype=torch.float64))


def test_ftrl_matches_published_per_coordinate_update():
    alpha, beta, l1, l2 = 0.1, 1.0, 0.05, 0.01
    rng = np.random.default_rng(0)
    grads = rng.normal(size=(20, 3))
    param = torch.zeros(3, requires_grad=True)
    opt = FTRL([param], alpha, beta, l1, l2)
    z, n, w = [0.0] * 3, [0.0] * 3, [0.0] * 3
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        for i in range(3):  # McMahan et al. 2013, Algorithm 1
            sigma = (math.sqrt(n[i] + g[i] ** 2) - math.sqrt(n[i])) / alpha
            z[i] += g[i] - sigma * w[i]
            n[i] += g[i] ** 2
            shrunk = z[i] - math.copysign(l1, z[i])
            w[i] = 0.0 if abs(z[i]) <= l1 else -shrunk / ((beta + math.sqrt(n[i])) / alpha + l2)
        np.testing.assert_allclose(param.detach().numpy(), w, rtol=1e-5, atol=1e-7)


def test_pretraining_learns(ml1m_fixture):
    tensors = TensorData.from_encoded(ml1m_fixture)
    rows = np.arange(len(ml1m_fixture.labels))
    torch.manual_seed(0)
    model = build_model("FM", ml1m_fixture.layout, ModelSettings())
    untrained = predict(model, tensors, rows)
    result = pretrain(model, tensors, rows, PretrainSettings(epochs=4, batch_size=256), seed=0, progress=False)
    trained = predict(model, tensors, rows)
    from metaselector.evaluation.metrics import logloss
    labels = ml1m_fixture.labels
    assert logloss(labels, trained) < logloss(labels, untrained) - 0.01
    assert result.best_epoch >= 1 and result.history and result.optimizer_state["state"]


def test_unknown_model_name(ml1m_fixture):
    from metaselector.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("XGBoost", ml1m_fixture.layout, ModelSettings())


@pytest.mark.parametrize("name", ["FM", "FFM", "DeepFM", "MF"])
def test_lazy_table_updates_match_dense_adam_on_the_first_step(ml1m_fixture, name):
    """Big vocabularies update only the rows a batch uses (SparseAdam on the tables): from a fresh
    state the first step equals dense Adam's, and rows the batch did not use never move."""
    from metaselector.training.pretrain import AdamWithLazyTables, make_optimizer, train_epoch

    # float64: Adam divides by |gradient| + eps, so float32 summation order alone would show
    # where a gradient is near eps.
    plain = TensorData.from_encoded(ml1m_fixture)
    tensors = TensorData(plain.ids, plain.weights.double(), plain.labels.double(), plain.users)
    rows = np.arange(64)
    results = {}
    for lazy in (0, 1):
        torch.manual_seed(0)
        model = build_model(name, ml1m_fixture.layout, ModelSettings(embedding_dim=4, hidden=[8], dropout=0.0))
        model = model.double()
        settings = PretrainSettings(batch_size=64, l2_embedding=1e-3, lazy_table_rows=lazy)
        optimizer = make_optimizer(model, settings)
        assert isinstance(optimizer, AdamWithLazyTables) == bool(lazy)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_epoch(model, optimizer, tensors, rows, settings, torch.Generator().manual_seed(0))
        results[lazy] = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n in results[0]:
        torch.testing.assert_close(results[1][n], results[0][n], rtol=1e-7, atol=1e-9)
    unused = torch.ones(ml1m_fixture.layout.num_features, dtype=torch.bool)
    unused[torch.as_tensor(ml1m_fixture.ids[rows]).long().flatten()] = False
    assert unused.any()
    assert torch.equal(results[1]["embedding"][unused], before["embedding"][unused])


def test_mf_is_the_user_item_dot_product(ml1m_fixture):
    model = build_model("MF", ml1m_fixture.layout, ModelSettings(embedding_dim=3)).double()
    batch, _ = _batch(ml1m_fixture)
    user, item = batch.ids[:, model.user_slot], batch.ids[:, model.item_slot]
    expected = model.bias + model.bias_table[user, 0] + model.bias_table[item, 0] + \
        (model.embedding[user] * model.embedding[item]).sum(dim=1)
    torch.testing.assert_close(model(batch), expected)


def test_embedding_l2_leaves_first_order_weights_alone(ml1m_fixture):
    """`l2_embedding` shrinks MF's user and item vectors but not its biases, as it leaves the
    linear terms of LR, FM, FFM and DeepFM alone."""
    from metaselector.training.pretrain import _batch_loss, make_optimizer

    batch, labels = _batch(ml1m_fixture)
    for name, first_order, vectors in (("MF", "bias_table", "embedding"), ("FM", "linear", "embedding")):
        model = build_model(name, ml1m_fixture.layout, ModelSettings(embedding_dim=3))
        settings = PretrainSettings(l2_embedding=1.0, lazy_table_rows=0)
        loss, objective, _ = _batch_loss(model, make_optimizer(model, settings), batch, labels, settings,
                                         len(labels))
        (objective - loss).backward()  # the penalty alone
        assert getattr(model, first_order).grad is None or not getattr(model, first_order).grad.any()
        assert getattr(model, vectors).grad[batch.ids.unique()[1:]].abs().sum(dim=1).gt(0).all()


def test_din_attends_only_to_real_history_items(ml1m_fixture):
    torch.manual_seed(0)
    model = build_model("DIN", ml1m_fixture.layout, ModelSettings(embedding_dim=4, hidden=[8], dropout=0.0)).eval()
    batch, _ = _batch(ml1m_fixture)
    slots = model.history_slots
    padded = batch.weights[:, slots] == 0
    assert padded.any()
    changed = batch.ids.clone()
    changed[:, slots] = torch.where(padded, torch.randint_like(changed[:, slots], 1, 100), changed[:, slots])
    # ids under zero weights (padding) change nothing
    torch.testing.assert_close(model(type(batch)(changed, batch.weights)), model(batch))


def test_table_l2_shrinks_every_row_and_rows_l2_only_the_used_ones(ml1m_fixture):
    """`l2_scope = "table"` is weight decay: its penalty's gradient reaches every row of the
    vector tables (rows the batch never used included), equals 2 * l2 * row / batch size, leaves
    the first-order weights alone, and keeps the dense optimizer even over a big vocabulary;
    `"rows"` (the default) touches only the rows the batch uses."""
    from metaselector.training.pretrain import AdamWithLazyTables, _batch_loss, make_optimizer

    batch, labels = _batch(ml1m_fixture)
    unused = torch.ones(ml1m_fixture.layout.num_features, dtype=torch.bool)
    unused[batch.ids.unique()] = False
    assert unused.any()
    for scope in ("rows", "table"):
        model = build_model("MF", ml1m_fixture.layout, ModelSettings(embedding_dim=3)).double()
        settings = PretrainSettings(l2_embedding=0.5, l2_scope=scope, lazy_table_rows=1)
        optimizer = make_optimizer(model, settings)
        assert isinstance(optimizer, AdamWithLazyTables) == (scope == "rows")
        loss, objective, _ = _batch_loss(model, optimizer, batch, labels, settings, len(labels))
        if scope == "table":
            (objective - loss).backward()  # the penalty alone
            torch.testing.assert_close(model.embedding.grad, 2 * 0.5 * model.embedding.detach() / len(labels))
            assert model.bias_table.grad is None or not model.bias_table.grad.any()
    model = build_model("MF", ml1m_fixture.layout, ModelSettings(embedding_dim=3)).double()
    settings = PretrainSettings(l2_embedding=0.5, lazy_table_rows=0)
    loss, objective, _ = _batch_loss(model, make_optimizer(model, settings), batch, labels, settings, len(labels))
    (objective - loss).backward()
    assert not model.embedding.grad[unused].any()  # "rows": an unused row is left alone


def test_l2_scope_is_a_per_model_setting_checked_on_read():
    from metaselector.config import RunConfig
    from metaselector.errors import ConfigError
    from metaselector.experiment.context import pretrain_settings

    config = RunConfig.from_dict({"models": ["FM", "MF"], "model_settings": {"MF": {"l2_scope": "table"}}})
    assert pretrain_settings(config, "MF").l2_scope == "table" and pretrain_settings(config, "FM").l2_scope == "rows"
    with pytest.raises(ConfigError, match="model_settings.MF.l2_scope"):
        RunConfig.from_dict({"model_settings": {"MF": {"l2_scope": "everything"}}})
    with pytest.raises(ConfigError, match="pretrain.l2_scope"):
        RunConfig.from_dict({"pretrain": {"l2_scope": "all"}})


def test_rating_mf_adds_the_rating_error_to_the_label_loss(ml1m_fixture):
    """RatingMF's logits are label_scale * MF's score + label_shift; its pretraining objective is
    the label's LogLoss plus rating_loss times the mean squared error of MF's score against the
    rating standardised with the training rows' mean and spread, on the dense and the lazy-table
    path alike; a row without a rating adds nothing."""
    from metaselector.models.mf import MF
    from metaselector.training.objective import rating_target
    from metaselector.training.pretrain import _batch_loss, make_optimizer

    tensors = TensorData.from_encoded(ml1m_fixture)
    train_rows = np.arange(0, len(tensors.labels), 2)
    rows = np.arange(64)
    batch, labels = tensors.batch(rows)
    raw = tensors.ratings.double()
    standardised = (raw - raw[train_rows].mean()) / raw[train_rows].std()
    objectives = []
    for lazy in (0, 1):
        torch.manual_seed(0)
        model = build_model("RatingMF", ml1m_fixture.layout, ModelSettings(embedding_dim=3)).double()
        with torch.no_grad():
            model.label_scale.fill_(1.7)
            model.label_shift.fill_(-0.3)
        target = rating_target(model, tensors, train_rows, 2.0, "RatingMF")
        torch.testing.assert_close(target.double(), standardised, rtol=1e-5, atol=1e-5)
        ratings = target[rows].double()
        ratings[0] = float("nan")  # an event without a rating
        settings = PretrainSettings(l2_embedding=0.0, rating_loss=2.0, lazy_table_rows=lazy)
        loss, objective, _ = _batch_loss(model, make_optimizer(model, settings), batch, labels.double(), settings,
                                         len(rows), ratings)
        score = MF.forward(model, batch)
        torch.testing.assert_close(model(batch), 1.7 * score - 0.3)
        logits, rating = model(batch, with_rating=True)
        torch.testing.assert_close(rating, score)
        torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.double()))
        error = (score - ratings)[1:]
        torch.testing.assert_close(objective, loss + 2.0 * error.pow(2).sum() / len(rows))
        objectives.append(objective)
    torch.testing.assert_close(objectives[0], objectives[1])


def test_rating_mf_learns_the_ratings_and_is_refused_on_data_without_them(ml1m_fixture):
    """Pretraining brings RatingMF's score closer to the standardised ratings; on data with 0/1
    labels only it is refused with one line naming the model and the setting, unless
    rating_loss = 0 (then it trains on the labels alone)."""
    from metaselector.errors import ConfigError
    from metaselector.training.objective import rating_target

    tensors = TensorData.from_encoded(ml1m_fixture)
    rows = np.arange(len(tensors.labels))
    torch.manual_seed(0)
    model = build_model("RatingMF", ml1m_fixture.layout, ModelSettings(embedding_dim=4))
    target = rating_target(model, tensors, rows, 1.0, "RatingMF")

    def rating_error() -> float:
        with torch.no_grad():
            return float((model(tensors.batch(rows)[0], with_rating=True)[1] - target).pow(2).mean())

    before = rating_error()
    pretrain(model, tensors, rows, PretrainSettings(epochs=4, batch_size=256, adam_lr=0.01), seed=0, progress=False)
    assert rating_error() < before - 0.05
    unrated = TensorData(tensors.ids, tensors.weights, tensors.labels, tensors.users, tensors.timestamps, None)
    with pytest.raises(ConfigError, match=r"model RatingMF: \[pretrain\] rating_loss = 1.0 .* no"):
        pretrain(model, unrated, rows, PretrainSettings(epochs=1), seed=0, progress=False)
    result = pretrain(model, unrated, rows, PretrainSettings(epochs=1, rating_loss=0.0), seed=0, progress=False)
    assert np.isfinite(result.validation_logloss)


def test_a_run_refuses_a_rating_model_on_data_without_ratings_before_training(ml1m_fixture):
    """The check a run makes before pretraining anything: RatingMF on 0/1 labels only is refused
    with one line, unless its rating_loss is 0; data with ratings, or no such model, pass."""
    from metaselector.config import RunConfig
    from metaselector.errors import ConfigError
    from metaselector.experiment.context import check_rating_models

    tensors = TensorData.from_encoded(ml1m_fixture)
    unrated = TensorData(tensors.ids, tensors.weights, tensors.labels, tensors.users, tensors.timestamps, None)
    config = RunConfig.from_dict({"models": ["FM", "RatingMF"], "model_settings": {"RatingMF": {"rating_loss": 3.0}}})
    with pytest.raises(ConfigError, match=r"^model RatingMF: \[pretrain\] rating_loss = 3.0 .*0/1 labels only"):
        check_rating_models(config, unrated.ratings)
    check_rating_models(config, tensors.ratings)
    check_rating_models(config, torch.full((9,), float("nan")), names=["FM"])  # tune searching FM only
    with pytest.raises(ConfigError, match="RatingMF"):
        check_rating_models(config, torch.full((9,), float("nan")))
    check_rating_models(RunConfig.from_dict({"models": ["FM", "MF"]}), unrated.ratings)
    off = RunConfig.from_dict({"models": ["RatingMF"], "model_settings": {"RatingMF": {"rating_loss": 0}}})
    check_rating_models(off, unrated.ratings)


def test_rating_loss_is_a_per_model_setting_checked_on_read():
    from metaselector.config import RunConfig
    from metaselector.errors import ConfigError
    from metaselector.experiment.context import pretrain_settings

    config = RunConfig.from_dict({"models": ["MF", "RatingMF"], "model_settings": {"RatingMF": {"rating_loss": 7.5}}})
    assert pretrain_settings(config, "RatingMF").rating_loss == 7.5
    assert pretrain_settings(config, "MF").rating_loss == 1.0  # the shared default (MF does not read it)
    with pytest.raises(ConfigError, match="model_settings.RatingMF.rating_loss"):
        RunConfig.from_dict({"model_settings": {"RatingMF": {"rating_loss": -1}}})
