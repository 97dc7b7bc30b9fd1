"""MLP building blocks shared by DeepFM and the selectors.

ReLU and dropout are fused into one autograd function with a cheap mask: on CPU,
`torch.bernoulli_` draws one random number per element and was about 15% of a DeepFM
training step; here one 64-bit draw gives four 15-bit uniforms. The backward pass needs
only the output (gradient flows where it is positive), not ReLU's input and dropout's mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_BITS = 15  # uniforms per element: the low 15 bits of each 16-bit chunk of a 64-bit draw


def keep_mask(shape: torch.Size, drop: float, device: torch.device) -> torch.Tensor:
    """Boolean mask, each element kept with probability 1 - drop (drop rounded to k / 2**15)."""
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
