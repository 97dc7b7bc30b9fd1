"""The fused ReLU + dropout: drop rate, uniform over positions, exact gradient, eval is ReLU."""

import torch

from metaselector.models.layers import ReluDropout, keep_mask


def test_keep_mask_drops_at_the_requested_rate_at_every_position():
    torch.manual_seed(0)
    mask = keep_mask(torch.Size([4000, 256]), 0.1, torch.device("cpu"))
    assert mask.dtype == torch.bool and mask.shape == (4000, 256)
    assert abs((~mask).float().mean().item() - 0.1) < 0.002
    # Each 64-bit draw feeds four consecutive elements; the fourth comes from the draw's top
    # bits, which must be as random as the others.
    per_phase = (~mask).flatten().view(-1, 4).float().mean(dim=0)
    assert torch.all((per_phase - 0.1).abs() < 0.004), per_phase


def test_keep_mask_follows_the_torch_seed():
    torch.manual_seed(3)
    first = keep_mask(torch.Size([100, 7]), 0.5, torch.device("cpu"))
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask(torch.Size([100, 7]), 0.5, torch.device("cpu")))


def test_relu_dropout_output_and_gradient():
    torch.manual_seed(1)
    layer = ReluDropout(0.25).train()
    x = torch.randn(500, 64, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    kept = y != 0
    assert torch.all(x[kept] > 0)
    assert torch.allclose(y[kept], x[kept] / 0.75)
    positive = x.detach() > 0
    dropped_share = (~kept & positive).sum() / positive.sum()
    assert abs(dropped_share.item() - 0.25) < 0.03
    upstream = torch.randn_like(y)
    y.backward(upstream)
    expected = torch.where(kept, upstream / 0.75, torch.zeros_like(upstream))
    assert torch.allclose(x.grad, expected)


def test_relu_dropout_is_relu_in_eval_mode():
    layer = ReluDropout(0.5).eval()
    x = torch.randn(20, 5)
    assert torch.equal(layer(x), torch.relu(x))
