import pytest
import torch

from metaselector.training.row_state import LazyRowAdam, RowStore


def test_row_store_reads_fill_until_written_and_grows_without_losing_rows():
    store = RowStore(1000, (3,), fill=0.5, dtype=torch.float64)
    assert torch.equal(store.gather(torch.tensor([0, 999])), torch.full((2, 3), 0.5, dtype=torch.float64))
    first = torch.arange(0, 40)  # more rows than the initial capacity, so storage grows
    store.write(first, torch.arange(120, dtype=torch.float64).view(40, 3))
    store.write(torch.arange(500, 530), torch.full((30, 3), -1.0, dtype=torch.float64))
    assert store.stored_rows == 70
    torch.testing.assert_close(store.gather(first), torch.arange(120, dtype=torch.float64).view(40, 3))
    dense = store.dense()
    assert dense.shape == (1000, 3)
    assert torch.equal(dense[500:530], torch.full((30, 3), -1.0, dtype=torch.float64))
    assert torch.equal(dense[40:500], torch.full((460, 3), 0.5, dtype=torch.float64))
    # repeated and multi-dimensional row indices read like a tensor's
    assert torch.equal(store.gather(torch.tensor([[1, 1], [999, 2]])), dense[torch.tensor([[1, 1], [999, 2]])])
    copy = store.clone()
    store.write(torch.tensor([1]), torch.zeros(1, 3, dtype=torch.float64))
    assert copy.gather(torch.tensor([1]))[0, 0] == 3.0
    copy.copy_(store)
    assert torch.equal(copy.dense(), store.dense())


@pytest.mark.parametrize("as_store", [False, True])
def test_lazy_row_adam_equals_adam_on_rows_updated_every_step_and_leaves_others(as_store):
    torch.manual_seed(0)
    start = torch.randn(50, 4, dtype=torch.float64)
    reference = start.clone().requires_grad_(True)
    adam = torch.optim.Adam([reference], lr=0.01)
    if as_store:
        target = RowStore(50, (4,), fill=0.0, dtype=torch.float64)
        target.write(torch.arange(50), start)
    else:
        target = start.clone()
    lazy = LazyRowAdam({"t": target}, {"t": 0.01})
    always, once = torch.tensor([3, 7, 11]), torch.tensor([3, 7, 11, 20])
    for step in range(4):
        rows = once if step == 1 else always
        grad = torch.randn(len(rows), 4, dtype=torch.float64)
        reference.grad = torch.zeros_like(reference).index_add_(0, rows, grad)
        adam.step()
        lazy.step(rows, {"t": grad})
    values = target.dense() if as_store else target
    # rows given a gradient at every step follow dense Adam exactly
    torch.testing.assert_close(values[always], reference.detach()[always], rtol=1e-12, atol=1e-14)
    # a row used once is moved once (dense Adam keeps moving it on its moments); others never
    assert not torch.equal(values[20], start[20])
    assert not torch.allclose(values[20], reference.detach()[20])
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[once] = False
    assert torch.equal(values[untouched], start[untouched])
    assert lazy.moments["t"].stored_rows == 4


def test_meta_step_stores_rates_and_moments_only_for_the_episode_rows(make_module, make_episode):
    from metaselector.selection.meta_trainer import MetaTrainer

    learner = make_module(dtype=torch.float32, rates=None)  # every rate at inner_lr, none stored yet
    trainer = MetaTrainer(learner)
    tensors, tasks = make_episode()
    tensors = type(tensors)(tensors.ids, tensors.weights.float(), tensors.labels.float(), tensors.users)
    before = {n: learner.params[n].detach().clone() for n in learner.tables}
    rows, leaves, alphas, _ = trainer.episode_backward(tensors, tasks)
    trainer._outer_step(rows, leaves, alphas)
    outside = torch.ones(learner.params[learner.tables[0]].shape[0], dtype=torch.bool)
    outside[rows] = False
    for n in learner.tables:
        assert learner.alpha[n].stored_rows == len(rows), n
        assert trainer.table_optimizer.moments[n].stored_rows == len(rows), n
        assert torch.equal(learner.params[n].detach()[outside], before[n][outside]), n
        assert not torch.equal(learner.params[n].detach()[rows], before[n][rows]), n
        rates = learner.alpha[n].dense()
        assert torch.all(rates[outside] == 0.05), n
        assert not torch.all(rates[rows] == 0.05), n
