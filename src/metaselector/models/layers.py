"""MLP building blocks shared by DeepFM and the selectors.

ReLU and dropout are fused into one autograd function with a cheap mask: on CPU,
`torch.bernoulli_` draws one random number per element and was about 15% of a DeepFM
training step; here one 64-bit draw gives four 15-bit uniforms. The backward pass needs
only the output (gradient flows where it is positive), not ReLU's input and dropout's mask.

Under torch.distributed a batch's rows are split over ranks (every world-th row from the rank):
inside `global_rows`, every rank draws the mask of the whole global batch, from the same
generator state, and keeps its own rows, so a row's mask depends on the global batch and the
row, never on the number of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_BITS = 15  # uniforms per element: the low 15 bits of each 16-bit chunk of a 64-bit draw


# (rows in the global batch, this process's first row, stride) while `global_rows` is active
_GLOBAL_ROWS: tuple[int, int, int] | None = None


@contextlib.contextmanager
def global_rows(size: int, first: int, step: int) -> Iterator[None]:
    """Within this block, dropout masks are drawn for a global batch of `size` rows, of which this
    process holds rows first, first + step, ... (see the module docstring)."""
    global _GLOBAL_ROWS
    previous, _GLOBAL_ROWS = _GLOBAL_ROWS, (size, first, step)
    try:
        yield
    finally:
        _GLOBAL_ROWS = previous


def keep_mask(shape: torch.Size, drop: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, each element kept with probability 1 - drop (drop rounded to k / 2**15)."""
    if _GLOBAL_ROWS is not None and len(shape) >= 1:
        size, first, step = _GLOBAL_ROWS
        if len(range(first, size, step)) == shape[0]:
            return _draw_mask(torch.Size((size, *shape[1:])), drop, device)[first::step]
    return _draw_mask(shape, drop, device)


def _draw_mask(shape: torch.Size, drop: float, device: torch.device) -> torch.Tensor:
    if device.type != "cpu":
        return torch.rand(shape, device=device) >= drop
    count = shape.numel()
    draws = torch.empty((count + 3) // 4, dtype=torch.int64).random_()  # uniform on [0, 2**63)
    chunks = draws.view(torch.int16)[:count].view(shape)
    # The top chunk of each draw has only 15 random bits, so every chunk keeps its low 15.
    return (chunks & (2**_BITS - 1)) >= round(drop * 2**_BITS)


class _ReluDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, drop: float) -> torch.Tensor:
        out = x.relu().mul_(keep_mask(x.shape, drop, x.device)).mul_(1.0 / (1.0 - drop))
        # An element passes gradient exactly where the output is positive: no mask to keep.
        ctx.save_for_backward(out)
        ctx.scale = 1.0 / (1.0 - drop)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return grad.mul(out > 0).mul_(ctx.scale), None


class ReluDropout(nn.Module):
    """relu(x) followed by dropout(p) in training mode; plain ReLU in eval mode or at p = 0."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return F.relu(x)
        return _ReluDropout.apply(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(inputs: int, hidden: list[int], dropout: float, outputs: int) -> nn.Sequential:
    """Linear -> ReLU -> dropout per hidden layer, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), ReluDropout(dropout)]
        inputs = width
    layers.append(nn.Linear(inputs, outputs))
    return nn.Sequential(*layers)
