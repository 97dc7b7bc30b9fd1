"""gather_rows under the transforms meta-learning uses: its own vmap rules (per-user tables read
as one flat table) must give what plain indexing gives, for values, gradients and second-order
gradients, with a table per user or one shared table."""

import torch

from metaselector.models.base import gather_rows


def _loss(table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (gather_rows(table, ids) * weights).sin().sum()


def _reference_loss(table: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (table[ids] * weights).sin().sum()


def _inputs(users=3, rows=7, width=4, n=5, slots=2):
    generator = torch.Generator().manual_seed(0)
    tables = torch.randn(users, rows, width, generator=generator, dtype=torch.float64)
    ids = torch.randint(0, rows, (users, n, slots), generator=generator)
    ids[0, 0, :] = ids[0, 1, 0]  # a row read several times: its gradient is a sum
    weights = torch.randn(users, n, slots, width, generator=generator, dtype=torch.float64)
    return tables, ids, weights


def test_vmapped_gather_and_its_gradient_match_plain_indexing_per_user():
    tables, ids, weights = _inputs()
    values = torch.func.vmap(gather_rows)(tables, ids)
    assert torch.equal(values, torch.stack([t[i] for t, i in zip(tables, ids, strict=True)]))
    grads = torch.func.vmap(torch.func.grad(_loss))(tables, ids, weights)
    expected = torch.stack([torch.func.grad(_reference_loss)(t, i, w) for t, i, w in zip(tables, ids, weights,
                                                                                           strict=True)])
    torch.testing.assert_close(grads, expected)


def test_second_order_gradients_match_under_vmap():
    tables, ids, weights = _inputs()

    def adapted_loss(table, ids, weights, loss):
        step = table - 0.1 * torch.func.grad(loss)(table, ids, weights)
        return loss(step, ids, weights)

    ours = torch.func.vmap(torch.func.grad(lambda t, i, w: adapted_loss(t, i, w, _loss)))(tables, ids, weights)
    reference = torch.stack([torch.func.grad(adapted_loss)(t, i, w, _reference_loss)
                             for t, i, w in zip(tables, ids, weights, strict=True)])
    torch.testing.assert_close(ours, reference)


def test_shared_table_with_ids_per_user():
    tables, ids, weights = _inputs()
    shared = tables[0]
    values = torch.func.vmap(gather_rows, in_dims=(None, 0))(shared, ids)
    assert torch.equal(values, shared[ids])
    grads = torch.func.vmap(torch.func.grad(_loss), in_dims=(None, 0, 0))(shared, ids, weights)
    expected = torch.stack([torch.func.grad(_reference_loss)(shared, i, w) for i, w in zip(ids, weights, strict=True)])
    torch.testing.assert_close(grads, expected)


def test_per_user_tables_with_shared_ids_and_autograd_outside_vmap():
    tables, ids, weights = _inputs()
    values = torch.func.vmap(gather_rows, in_dims=(0, None))(tables, ids[0])
    assert torch.equal(values, tables[:, ids[0]])
    table = tables[0].clone().requires_grad_(True)
    _loss(table, ids[0], weights[0]).backward()
    torch.testing.assert_close(table.grad, torch.func.grad(_reference_loss)(tables[0], ids[0], weights[0]))
