"""The straightforward MAML reference: a dense per-user copy of every parameter.

For each user, `theta_u = theta - alpha * grad` over whole tables (every row, touched or
not), through `torch.func.functional_call`. It is what the project's sparse meta-step must
equal (tests compare their gradients) and what the episode benchmark measures it against.
"""

from __future__ import annotations

import torch

from ..models.base import Batch
from .ensemble import Ensemble


def dense_episode_backward(ensemble: Ensemble, alpha: dict[str, torch.Tensor], episode: list[tuple],
                           inner_steps: int = 1, first_order: bool = False, model_loss: str = "mixture") -> float:
    """Accumulate the meta-gradient into the parameters' and alphas' .grad; return mean loss.

    `episode` holds (support_batch, support_labels, query_batch, query_labels) per user.
    """
    params = dict(ensemble.named_parameters())
    names = list(params)
    total = 0.0
    for s_batch, s_labels, q_batch, q_labels in episode:
        adapted = dict(params)
        for _ in range(inner_steps):
            loss = ensemble.loss(adapted, Batch(*s_batch), s_labels, model_loss=model_loss)
            grads = torch.autograd.grad(loss, [adapted[n] for n in names], create_graph=not first_order,
                                        allow_unused=True)
            adapted = {n: adapted[n] if g is None else adapted[n] - alpha[n] * g
                       for n, g in zip(names, grads, strict=True)}
        query_loss = ensemble.loss(adapted, Batch(*q_batch), q_labels, model_loss=model_loss)
        (query_loss / len(episode)).backward()
        total += query_loss.item()
    return total / len(episode)
