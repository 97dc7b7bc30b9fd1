import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaselector.config import RunConfig
from metaselector.data.splits import split_users
from metaselector.pipeline import reproduce
from metaselector.selection.dense_reference import dense_episode_backward
from metaselector.selection.ensemble import Ensemble
from metaselector.selection.meta_trainer import MetaTrainer
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.tasks import tasks_for
from metaselector.selection.user_rows import gather_users
from metaselector.settings import merge
from metaselector.training.base_models import holdout_rows
from metaselector.training.tensors import TensorData

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _sparse_grads(learner, tensors, tasks):
    rows, leaves, alphas, loss = MetaTrainer(learner).episode_backward(tensors, tasks)
    grads = {}
    for n, p in learner.params.items():
        if n in learner.tables:
            dense = torch.zeros_like(p).index_add_(0, rows, leaves[n].grad)
            dense_alpha = torch.zeros_like(p).index_add_(0, rows, alphas[n].grad)
        else:
            dense, dense_alpha = p.grad.clone(), learner.alpha[n].grad.clone()
        grads[n], grads["alpha:" + n] = dense, dense_alpha
    return grads, loss


def _dense_grads(learner, tensors, tasks):
    episode = []
    for t in tasks:
        s_batch, s_labels = tensors.batch(t.support)
        q_batch, q_labels = tensors.batch(t.query)
        episode.append((tuple(s_batch), s_labels, tuple(q_batch), q_labels))
    alpha = {n: a.requires_grad_(True) for n, a in learner.dense_alpha().items()}
    loss = dense_episode_backward(learner.ensemble, alpha, episode, first_order=learner.settings.first_order,
                                  model_loss=learner.settings.model_loss)
    grads = {}
    for n, p in learner.params.items():
        grads[n], grads["alpha:" + n] = p.grad.clone(), alpha[n].grad.clone()
    return grads, loss


def _zero(learner):
    for n, t in [*learner.params.items(), *learner.alpha.items()]:
        if n not in learner.tables or t is learner.params[n]:
            t.grad = None


@pytest.mark.parametrize("first_order,model_loss", [(False, "mixture"), (True, "mixture"), (False, "own")])
def test_sparse_meta_gradient_equals_dense_reference(make_module, make_episode, first_order, model_loss):
    learner = make_module(first_order)
    learner.settings.model_loss = model_loss
    tensors, tasks = make_episode()
    dense, dense_loss = _dense_grads(learner, tensors, tasks)
    _zero(learner)
    sparse, sparse_loss = _sparse_grads(learner, tensors, tasks)
    assert sparse_loss == pytest.approx(dense_loss, rel=1e-12)
    for name, value in dense.items():
        scale = value.abs().max().clamp(min=1e-30)
        assert ((sparse[name] - value).abs().max() / scale) < 1e-8, name
    # theta, phi and alpha all receive a non-zero meta-gradient
    for prefix in ("models.FM.embedding", "selector.embedding", "alpha:models.DeepFM.embedding",
                   "alpha:selector.deep.0.weight"):
        assert sparse[prefix].abs().max() > 0, prefix


def test_first_and_second_order_differ(make_module, make_episode):
    tensors, tasks = make_episode()
    second, _ = _sparse_grads(make_module(False), tensors, tasks)
    first, _ = _sparse_grads(make_module(True), tensors, tasks)
    difference = max(float((second[n] - first[n]).abs().max()) for n in second if not n.startswith("alpha:"))
    assert difference > 1e-6


def test_inner_step_changes_only_touched_rows(make_module, make_episode):
    learner = make_module()
    tensors, tasks = make_episode(1)
    task = tasks[0]
    s_batch, s_labels = tensors.batch(task.support)
    params = dict(learner.params)
    adapted = learner.adapt(params, learner.dense_alpha(), s_batch, s_labels, create_graph=False)
    touched = set(torch.unique(s_batch.ids).tolist())
    for n in learner.tables:
        changed = set(torch.nonzero((adapted[n] - params[n]).flatten(1).abs().sum(1) > 0).flatten().tolist())
        assert changed and changed <= touched, n
    # the sparse path (the user's own rows, gathered as meta-training and meta-testing gather them)
    # adapts exactly those rows, to the same values
    users = gather_users(tensors, [task.support], [task.query], learner.vocabulary, learner.device)
    user_rows, local_support, local_labels, _, _ = users.user(0)
    local = {n: (p.detach()[user_rows].requires_grad_(True) if n in learner.tables else p) for n, p in params.items()}
    rates = {n: (learner.alpha[n].gather(user_rows) if n in learner.tables else learner.alpha[n].detach())
             for n in params}
    local_adapted = learner.adapt(local, rates, local_support, local_labels, create_graph=False)
    for n in learner.tables:
        torch.testing.assert_close(local_adapted[n], adapted[n][user_rows].detach(), rtol=1e-10, atol=1e-12)


def test_meta_step_updates_only_episode_rows(ml1m_fixture, make_module):
    learner = make_module(dtype=torch.float32)
    tensors = TensorData.from_encoded(ml1m_fixture)
    split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
    tasks = tasks_for(ml1m_fixture.users, split.support, split.query)[:2]
    before = {n: learner.params[n].detach().clone() for n in learner.tables}
    MetaTrainer(learner).meta_step(tensors, tasks)
    used = torch.unique(tensors.ids[np.concatenate([np.concatenate([t.support, t.query]) for t in tasks])].long())
    for n in learner.tables:
        moved = torch.nonzero((learner.params[n] - before[n]).flatten(1).abs().sum(1) > 0).flatten()
        assert len(moved) > 0 and set(moved.tolist()) <= set(used.tolist()), n


TINY = {"seeds": 1, "embedding_dim": 4, "deepfm_hidden": [8], "pretrain": {"epochs": 1, "batch_size": 256},
        "meta": {"epochs": 1, "selector_hidden": [8]}, "sample_level": {"epochs": 1, "hidden": [8]}}


def tiny(dataset: str, **overrides) -> RunConfig:
    return RunConfig.from_dict(merge({**TINY, "dataset": dataset}, overrides))


def test_reproduce_is_deterministic_and_complete(ml1m_fixture, tmp_path):
    config = tiny("movielens-1m", new_users=0.2)
    torch.set_num_threads(1)
    reproduce(config, ml1m_fixture, tmp_path / "a", progress=False, log=lambda m: None)
    reproduce(config, ml1m_fixture, tmp_path / "b", progress=False, log=lambda m: None)
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    logged = []
    reproduce(config, ml1m_fixture, tmp_path / "b", progress=False, log=logged.append, resume=True)
    assert any("finished earlier" in m for m in logged)  # the finished seed is read, not rerun
    assert json.loads((tmp_path / "b" / "results.json").read_text())["rows"] == b["rows"]
    assert set(a) == {"dataset", "statistics", "rows", "user_proportions", "seeds", "wall_seconds", "new_user_rows",
                      "deviations", "open_choices", "structural", "selector_diagnostics"}
    assert a["rows"] == b["rows"]
    expected = {"LR", "FM", "FFM", "DeepFM", "Perfect Sample-level Selector", "Perfect User-level Selector",
                "Split-half User-level Selector", "Sample-level Selector", "Global Blend",
                "Feature-weighted Stacking", "MetaSelector (paper)", "MetaSelector (validated)",
                "MetaSelector-Simplified", "LR + per-user adaptation",
                "DeepFM + per-user adaptation", "Per-user adaptation + Global Blend",
                "Per-user adaptation + Feature-weighted Stacking"}
    assert expected <= set(a["rows"])
    metrics = {"auc", "logloss", "relimpr", "gauc", "auc_std", "logloss_std"}
    for name, row in a["rows"].items():
        assert metrics <= set(row) and row["variant"] in ("paper", "extension"), name
        if "best_epoch" in row:  # every meta-trained row: its settings and best epoch per seed
            assert len(row["best_epoch"]) == 1 and isinstance(row["settings"], dict)
    assert {n for n, r in a["rows"].items() if r["variant"] == "paper"} == {
        "LR", "FM", "FFM", "DeepFM", "Perfect Sample-level Selector", "Perfect User-level Selector",
        "Sample-level Selector", "MetaSelector (paper)", "MetaSelector-Simplified"}
    assert sum(a["user_proportions"].values()) == pytest.approx(1.0)
    assert (tmp_path / "a" / "figures" / "figure3b_metaselector_vs_best.png").stat().st_size > 1000
    assert "(oracle)" in (tmp_path / "a" / "report.md").read_text()
    notes = json.loads((tmp_path / "a" / "training_notes.json").read_text())
    assert notes["seed 0"]["MetaSelector (paper)"]["epochs"][0]["epoch"] == 0
    # oracles over the single models are never worse than any single model
    rows = a["rows"]
    best_single = min(rows[m]["logloss"] for m in ["LR", "FM", "FFM", "DeepFM"])
    assert rows["Perfect User-level Selector"]["logloss"] <= best_single


def test_meta_training_never_sees_the_rows_it_stops_on(ml1m_fixture, tmp_path, monkeypatch):
    """The base models' shared validation slice is left out of every meta-training episode, and
    MetaSelector's best epoch is the one with the lowest test-time-setup LogLoss on it."""
    seen, fits = [], []
    meta_step, fit = MetaTrainer.meta_step, MetaTrainer.fit

    def recording_step(self, data, tasks):
        seen.extend(np.concatenate([np.concatenate([t.support, t.query]) for t in tasks]).tolist())
        return meta_step(self, data, tasks)

    def recording_fit(self, *args, **kwargs):
        history = fit(self, *args, **kwargs)
        fits.append((kwargs.get("criterion"), history))
        return history

    monkeypatch.setattr(MetaTrainer, "meta_step", recording_step)
    monkeypatch.setattr(MetaTrainer, "fit", recording_fit)
    config = tiny("movielens-1m", meta={"epochs": 2, "patience": 5}, ablations=False)
    torch.set_num_threads(1)
    reproduce(config, ml1m_fixture, tmp_path, progress=False, log=lambda m: None)
    split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
    holdout = holdout_rows(split.support, config.pretrain.validation_fraction, seed=0)
    assert len(holdout) > 0 and seen
    assert not set(seen) & set(holdout.tolist())
    assert fits  # both MetaSelector rows, and the per-model learners the validated one starts from
    for criterion, history in fits:
        assert criterion is not None and len(history.epochs) == 3
        losses = [e["validation_logloss"] for e in history.epochs]
        assert all("held_out_users_query_logloss" in e for e in history.epochs)
        assert history.best_epoch == int(np.argmin(losses))
        assert history.best_validation == pytest.approx(min(losses))


def test_reproduce_runs_on_every_format_fixture(tmp_path):
    from metaselector.data.loading import load_dataset

    for name, folder in [("movielens-100k", "ml-100k"), ("amazon-electronics", "amazon")]:
        data = load_dataset(name, FIXTURES / folder, log=lambda m: None)
        config = tiny(name, ablations=False, models=["LR", "FM", "FFM", "DeepFM", "MF", "DIN", "RatingMF"])
        summary = reproduce(config, data, tmp_path / name, progress=False, log=lambda m: None)
        assert np.isfinite(summary["rows"]["MetaSelector (paper)"]["auc"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sparse_meta_step_on_cuda_matches_cpu(make_module, make_episode):
    tensors, tasks = make_episode()
    cpu, cpu_loss = _sparse_grads(make_module(), tensors, tasks)
    learner = make_module()
    learner = MetaSGDEnsemble(learner.ensemble, learner.settings, "cuda")
    with torch.no_grad():
        for n, a in learner.alpha.items():
            a.copy_(make_module().alpha[n])
    gpu, gpu_loss = _sparse_grads(learner, tensors, tasks)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-9)
    for name, value in cpu.items():
        torch.testing.assert_close(gpu[name].cpu(), value, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_batched_meta_testing_equals_per_user_dense_adaptation(make_module, make_episode, inner_steps):
    """predict() pads users into vmapped groups with per-user tables; each user's predictions
    must equal adapting a full copy of every parameter on that user alone."""
    learner = make_module()
    learner.settings.inner_steps = inner_steps
    tensors, tasks = make_episode(n_users=6)
    eval_rows = [t.query for t in tasks]
    eval_rows[2] = eval_rows[2][:1]  # users of different sizes share a chunk
    batched = learner.predict(tensors, tasks, eval_rows)
    for task, rows, got in zip(tasks, eval_rows, batched, strict=True):
        params = {n: p.detach().clone().requires_grad_(True) for n, p in learner.params.items()}
        alphas = learner.dense_alpha()
        s_batch, s_labels = tensors.batch(task.support)
        adapted = learner.adapt(params, alphas, s_batch, s_labels, create_graph=False)
        e_batch, _ = tensors.batch(rows)
        expected = learner.ensemble.probabilities(adapted, e_batch).detach().numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    unadapted = learner.predict(tensors, tasks, eval_rows, adapt=False)
    plain = learner.ensemble.probabilities(dict(learner.params), tensors.batch(eval_rows[0])[0])
    np.testing.assert_allclose(unadapted[0], plain.detach().numpy(), rtol=1e-10)
    assert not np.allclose(unadapted[0], batched[0])


def test_own_model_loss_adapts_each_model_as_if_alone(make_module, make_episode):
    """model_loss = "own": base model k's inner gradient is its own LogLoss's gradient (what a
    one-model ensemble gets), and the selector's is the mixture's with the models' predictions
    held fixed; "mixture" reaches model k only scaled by its weight, so the two differ."""
    learner = make_module()
    tensors, tasks = make_episode(n_users=1)
    batch, labels = tensors.batch(tasks[0].support)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in learner.params.items()}
    ensemble = learner.ensemble
    own = torch.func.grad(lambda p: ensemble.loss(p, batch, labels, model_loss="own"))(params)
    mixture = torch.func.grad(lambda p: ensemble.loss(p, batch, labels, model_loss="mixture"))(params)
    for key, model in ensemble.models.items():
        alone = Ensemble({key: model}, None).to(torch.float64)
        prefix = f"models.{key}."
        mine = {n: v for n, v in params.items() if n.startswith(prefix)}
        expected = torch.func.grad(lambda p: alone.loss(p, batch, labels, model_loss="own"))(mine)  # noqa: B023
        for n in mine:
            torch.testing.assert_close(own[n], expected[n], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(own[f"{prefix}{model.table_names[0]}"], mixture[f"{prefix}{model.table_names[0]}"])
    fixed = ensemble.per_model(params, batch).detach()
    selector_only = torch.func.grad(
        lambda p: F.binary_cross_entropy(ensemble.mixture(p, batch, fixed)[0].clamp(1e-7, 1 - 1e-7), labels))(params)
    for n in params:
        if n.startswith("selector."):
            torch.testing.assert_close(own[n], selector_only[n], rtol=1e-10, atol=1e-12)


def test_metaselector_starts_from_each_models_own_adaptation(ml1m_fixture, monkeypatch):
    """model_start = "adapted": when MetaSelector's meta-training begins, each base model's theta
    and Meta-SGD rates are those its own per-user-adaptation learner ended with (in the support
    models' basis, before the change carried onto the single models)."""
    from metaselector.experiment.context import Timer, prepare_training
    from metaselector.experiment.meta_training import meta_train

    starts = []
    fit = MetaTrainer.fit

    def recording_fit(self, *args, **kwargs):
        if self.module.ensemble.selector is not None:
            starts.append((self.module.snapshot(), self.module.dense_alpha()))
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(MetaTrainer, "fit", recording_fit)
    config = tiny("movielens-1m", models=["LR", "FM", "DeepFM"],
                  meta={"epochs": 1, "model_start": "adapted", "model_loss": "own"})
    torch.set_num_threads(1)
    split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
    context = prepare_training(config, ml1m_fixture, split, 0, Timer(lambda m: None))
    meta_train(context, "MetaSelector", config.meta, list(config.models))
    (state, alphas), = starts
    moved = []
    for name in config.models:
        own, _ = context.adapted[name]
        carried = dict(context.base.singles[name].named_parameters())
        support = dict(context.base.support[name].named_parameters())
        own_alpha = own.dense_alpha()
        for pname in support:
            key = f"models.{name}.{pname}"
            expected = own.params[key].detach() - (carried[pname].detach() - support[pname].detach())
            torch.testing.assert_close(state["params"][key], expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(alphas[key], own_alpha[key])
        if any(not torch.allclose(state["params"][f"models.{name}.{p}"], support[p].detach()) for p in support):
            moved.append(name)
    # a model whose own meta-training kept its epoch 0 starts from its pretrained weights; at least
    # one did not, so the start is not simply the pretrained models
    assert moved and all(context.adapted[m][1]["best_epoch"] > 0 for m in moved)


def test_rows_mixing_adapted_models_meta_test_each_model_once(ml1m_fixture, monkeypatch):
    """The "<model> + per-user adaptation" rows and the rows that mix the adapted models read one
    meta-test per model and task list, and what they read is what meta-testing gives."""
    from metaselector.experiment.context import Timer, prepare_training
    from metaselector.experiment.meta_training import adapted_predictions
    from metaselector.experiment.methods.metaselector import AdaptationThenBlend, PerUserAdaptation

    config = tiny("movielens-1m", models=["LR", "FM"])
    torch.set_num_threads(1)
    split = split_users(ml1m_fixture.users, ml1m_fixture.timestamps, seed=0)
    context = prepare_training(config, ml1m_fixture, split, 0, Timer(lambda m: None))
    test_tasks = tasks_for(ml1m_fixture.users, split.train, split.test)
    calls = []
    predict = MetaSGDEnsemble.predict

    def counting_predict(self, data, tasks, *args, **kwargs):
        calls.append(tasks)
        return predict(self, data, tasks, *args, **kwargs)

    monkeypatch.setattr(MetaSGDEnsemble, "predict", counting_predict)
    blend = AdaptationThenBlend()
    blend.fit(context)
    rows = PerUserAdaptation("LR", config.meta)
    rows.fit(context)
    calls.clear()
    mixed = np.concatenate(blend.predict(context, test_tasks))
    alone = rows.predict(context, test_tasks)
    assert len(calls) == 2 and all(c is test_tasks for c in calls)  # LR and FM once each
    learner, _ = context.adapted["LR"]
    fresh = predict(learner, context.tensors, test_tasks, [t.query for t in test_tasks])
    for a, b in zip(alone, fresh, strict=True):
        np.testing.assert_array_equal(a, b)
    probabilities = np.stack([np.concatenate(fresh),
                              np.concatenate(predict(context.adapted["FM"][0], context.tensors, test_tasks,
                                                     [t.query for t in test_tasks]))], axis=1)
    np.testing.assert_allclose(mixed, probabilities @ blend.weights)
    # another task list (the same users' rows, another list) is meta-tested anew
    adapted_predictions(context, "LR", list(test_tasks))
    assert len(calls) == 3


def test_length_groups_cover_every_user_once_and_bound_padding():
    from metaselector.selection.metasgd import MAX_PADDING, ROW_BUDGET, SMALL_PADDING, length_groups

    rng = np.random.default_rng(0)
    support, evaluation = rng.integers(16, 150, 300), rng.integers(4, 101, 300)
    groups = length_groups(support, evaluation, max_users=64)
    assert sorted(np.concatenate(groups).tolist()) == list(range(300))
    for group in groups:
        assert len(group) <= 64
        padded = len(group) * (support[group].max() + evaluation[group].max())
        if len(group) > 1:
            assert padded <= ROW_BUDGET
            assert padded - (support[group] + evaluation[group]).sum() <= max(MAX_PADDING * padded, SMALL_PADDING)
    # equal lengths: one group up to the budget; real mixed lengths: split by length
    assert len(length_groups(np.full(32, 50), np.full(32, 100), max_users=64)) == 1
    mixed = length_groups(support[:32], evaluation[:32], max_users=64)
    assert len(mixed) > 1 and [len(g) for g in mixed] != [32]


def test_selector_rate_choice_keeps_the_factor_with_the_lowest_held_out_loss(make_module, make_episode):
    """[meta] selector_rate_scales: each factor (1 always among them) is scored with exactly the
    learned selector rates times that factor (the others restored between candidates), the base
    models' rates never change, the lowest held-out LogLoss wins (ties: the smaller factor) if its
    gain over factor 1 is at least selector_rate_min_z standard errors, and the module keeps the
    chosen rates."""
    from metaselector.experiment.meta_training import choose_selector_rates

    module = make_module()
    learned = module.dense_alpha()
    selector = [n for n in learned if n.startswith("selector.")]
    assert selector and any(n in module.tables for n in selector)  # a table and dense rates
    seen = []
    # per factor, three users' per-row held-out losses: x100 and x1000 gain on every user
    losses = {1: [[0.50, 0.52], [0.47], [0.51, 0.49, 0.48]], 10: [[0.51, 0.53], [0.48], [0.52, 0.50, 0.49]],
              100: [[0.48, 0.50], [0.46], [0.49, 0.47, 0.47]], 1000: [[0.48, 0.50], [0.46], [0.49, 0.47, 0.47]]}

    def per_user() -> list[np.ndarray]:
        now = module.dense_alpha()
        factor = float((now[selector[0]] / learned[selector[0]]).flatten()[0])
        for n in learned:
            expected = learned[n] * factor if n.startswith("selector.") else learned[n]
            torch.testing.assert_close(now[n], expected)
        seen.append(round(factor))
        return [np.array(u) for u in losses[round(factor)]]

    tensors, tasks = make_episode(2)
    before = module.predict(tensors, tasks, [t.query for t in tasks], with_weights=True)
    result = choose_selector_rates(module, [10, 100, 1000], per_user, min_z=2.0)
    assert seen == [1, 10, 100, 1000]
    means = {f: float(np.mean(np.concatenate(v))) for f, v in losses.items()}
    assert result["validation"] == {f"{f}": round(m, 7) for f, m in means.items()}
    assert result["chosen"] == result["best"] == 100
    assert result["gain"] == pytest.approx(means[1] - means[100], abs=1e-7)
    assert result["z"] >= 2.0
    after = module.dense_alpha()
    for n in learned:
        torch.testing.assert_close(after[n], learned[n] * (100 if n.startswith("selector.") else 1))
    # a larger selector step moves each user's weights further from the shared selector's
    moved = module.predict(tensors, tasks, [t.query for t in tasks], with_weights=True)
    assert not np.allclose(before[0][1], moved[0][1])
    # a lower mean that is within the users' noise keeps the learned rates: x10 gains on one
    # user and loses on the others
    module = make_module()
    noisy = {1: [[0.50, 0.52], [0.47], [0.51, 0.49, 0.48]], 10: [[0.30, 0.32], [0.50], [0.53, 0.51, 0.50]]}

    def noisy_losses() -> list[np.ndarray]:
        factor = float((module.dense_alpha()[selector[0]] / learned[selector[0]]).flatten()[0])
        return [np.array(u) for u in noisy[round(factor)]]

    result = choose_selector_rates(module, [10], noisy_losses, min_z=2.0)
    assert result["best"] == 10 and 0 < result["z"] < 2.0 and result["chosen"] == 1
    for n, a in module.dense_alpha().items():
        torch.testing.assert_close(a, learned[n])
    # with min_z = 0 the lowest held-out LogLoss is kept, whatever its margin
    module = make_module()
    assert choose_selector_rates(module, [10], noisy_losses, min_z=0.0)["chosen"] == 10
