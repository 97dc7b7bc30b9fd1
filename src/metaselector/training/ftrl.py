"""FTRL-Proximal (McMahan et al. 2013, Algorithm 1) as a torch optimizer.

Per coordinate i with gradient g_i:
    sigma_i = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha
    z_i    += g_i - sigma_i * w_i
    n_i    += g_i^2
    w_i     = 0                                             if |z_i| <= l1
            = -(z_i - sign(z_i) l1) / ((beta + sqrt(n_i)) / alpha + l2)   otherwise
Weights are a function of (z, n), so parameters should start at zero.
"""

from __future__ import annotations

import torch


class FTRL(torch.optim.Optimizer):
    def __init__(self, params, alpha: float = 0.05, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0):
        if alpha <= 0:
            raise ValueError(f"FTRL alpha must be positive, got {alpha}")
        super().__init__(params, {"alpha": alpha, "beta": beta, "l1": l1, "l2": l2})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, beta, l1, l2 = group["alpha"], group["beta"], group["l1"], group["l2"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    grad = grad.to_dense()
                state = self.state[param]
                if not state:
                    state["z"] = torch.zeros_like(param)
                    state["n"] = torch.zeros_like(param)
                z, n = state["z"], state["n"]
                new_n = n + grad * grad
                sigma = (new_n.sqrt() - n.sqrt()) / alpha
                z.add_(grad - sigma * param)
                n.copy_(new_n)
                shrunk = z - z.sign() * l1
                param.copy_(torch.where(z.abs() <= l1, torch.zeros_like(z),
                                        -shrunk / ((beta + n.sqrt()) / alpha + l2)))
        return loss
