"""Per-row state of big embedding tables, held only for the rows that have been used.

A table's Meta-SGD rates and Adam moments start equal on every row (the initial rate; zero)
and change only on rows a batch or an episode touches. At an Amazon-Electronics vocabulary
(318k features) the four base models and the selector hold 116 MB of table weights; their
rates and both optimizers' moments would add 580 MB more if stored densely, for the few
thousand rows a meta-training run ever touches.
"""

from __future__ import annotations

import torch


class RowStore:
    """Values of a [num_rows, *row_shape] tensor, stored only for rows that were written.

    Slot 0 of `values` holds the fill value and every unwritten row points at it, so reading
    any rows is one index: values[slot[rows]].
    """

    def __init__(self, num_rows: int, row_shape: tuple[int, ...], fill: float,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.fill = fill
        # int32 slots: the map is the one per-row cost left (1.2 MB per 320k rows)
        self.slot = torch.zeros(num_rows, dtype=torch.int32, device=device)
        self.values = torch.full((16, *row_shape), fill, dtype=dtype, device=device)
        self.count = 1  # slots in use, the fill slot included

    @classmethod
    def like(cls, table: torch.Tensor, fill: float) -> RowStore:
        return cls(table.shape[0], tuple(table.shape[1:]), fill, table.dtype, table.device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.slot.shape[0], *self.values.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def stored_rows(self) -> int:
        return self.count - 1

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """The values of `rows` (any shape, repeats allowed): a new tensor."""
        return self.values[self.slot[rows]]

    def slots(self, rows: torch.Tensor) -> torch.Tensor:
        """Storage slots of `rows` (unique), allocating fill-valued slots for rows not stored yet."""
        slots = self.slot[rows]
        missing = slots == 0
        new = int(missing.sum())
        if new:
            if self.count + new > self.values.shape[0]:
                grown = self.values.new_full((max(2 * self.values.shape[0], self.count + new),
                                              *self.values.shape[1:]), self.fill)
                grown[:self.count] = self.values[:self.count]
                self.values = grown
            fresh = torch.arange(self.count, self.count + new, dtype=slots.dtype, device=slots.device)
            self.slot[rows[missing]] = fresh
            slots[missing] = fresh
            self.count += new
        return slots

    def scale_(self, factor: float) -> None:
        """Multiply every row's value (stored or not) by `factor`."""
        self.values.mul_(factor)
        self.fill *= factor

    def write(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Set `rows` (unique) to `values`."""
        slots = self.slots(rows)  # first: allocating may replace self.values
        self.values[slots] = values.to(self.values.dtype)

    def dense(self) -> torch.Tensor:
        """Every row, as one full tensor (for tests, exports and small vocabularies)."""
        return self.gather(torch.arange(self.slot.shape[0], device=self.slot.device))

    def clone(self) -> RowStore:
        copy = RowStore.__new__(RowStore)
        copy.fill, copy.count = self.fill, self.count
        copy.slot, copy.values = self.slot.clone(), self.values[:self.count].clone()
        return copy

    def copy_(self, other: RowStore) -> RowStore:
        """Become a copy of `other` (same rows, same shape), in place: holders keep this object."""
        self.fill, self.count = other.fill, other.count
        self.slot.copy_(other.slot)
        self.values = other.values[:other.count].to(self.slot.device, copy=True)
        return self


class LazyRowAdam:
    """Adam on table rows: each step updates only the rows given, with exactly Adam's update
    for them (same moments, bias correction and eps placement; torch's SparseAdam adds eps
    before the bias correction). Rows not given keep their values and moments (lazy Adam),
    where dense Adam would keep moving them on decaying moments. Bias correction counts this
    optimizer's steps, so from a fresh state the first step equals dense Adam's.

    Targets are full tensors (table weights) or RowStores (e.g. per-row Meta-SGD rates); the
    moments are RowStores, so they cost memory only for rows that were ever updated.
    """

    def __init__(self, targets: dict[str, torch.Tensor | RowStore], lrs: dict[str, float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.targets, self.lrs, self.betas, self.eps = targets, lrs, betas, eps
        self.steps = 0
        # exp_avg and exp_avg_sq of one row side by side: [slots, 2, *row_shape]
        self.moments = {n: RowStore(t.shape[0], (2, *t.shape[1:]), 0.0, t.dtype, t.device)
                        for n, t in targets.items()}

    @torch.no_grad()
    def step(self, rows: torch.Tensor, gradients: dict[str, torch.Tensor]) -> None:
        """`gradients[name][i]` is the gradient of row `rows[i]` (rows unique); names may be a subset."""
        self.steps += 1
        beta1, beta2 = self.betas
        correction1, correction2 = 1 - beta1 ** self.steps, 1 - beta2 ** self.steps
        for n, grad in gradients.items():
            store = self.moments[n]
            slots = store.slots(rows)
            moments = store.values[slots]
            m = moments[:, 0].mul_(beta1).add_(grad, alpha=1 - beta1)
            v = moments[:, 1].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            store.values[slots] = moments
            update = m.div_((v.sqrt_() / correction2 ** 0.5).add_(self.eps)).mul_(-self.lrs[n] / correction1)
            target = self.targets[n]
            if isinstance(target, RowStore):
                slots = target.slots(rows)  # first: allocating may replace target.values
                target.values.index_add_(0, slots, update)
            else:
                target.index_add_(0, rows, update)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "moments": {n: s.clone() for n, s in self.moments.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.moments = {n: s.clone() for n, s in state["moments"].items()}
