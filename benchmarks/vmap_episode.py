"""Measured alternative: the meta-training episode batched over users with torch.func.vmap
(users padded to the episode's largest, as meta-testing pads them) against the per-user loop
MetaTrainer uses (each user unpadded, one user's second-order graph alive at a time). Both
gather users the same way (selection/user_rows.py). Uniform user sizes (100 support, 33 query)
favour vmap; real users differ in size.

    python -m benchmarks.vmap_episode vocab_14k 2
"""

import statistics
import sys
import time

import torch
from torch.func import grad, vmap

from benchmarks.meta_episode import build, make_episode
from metaselector.models.base import Batch
from metaselector.selection.meta_settings import MetaSettings
from metaselector.selection.meta_trainer import MetaTrainer
from metaselector.selection.metasgd import MetaSGDEnsemble
from metaselector.selection.user_rows import gather_users


def main() -> None:
    torch.set_num_threads(int(sys.argv[2]))
    layout, tensors, tasks = make_episode(sys.argv[1])
    module = MetaSGDEnsemble(build(layout, sys.argv[1]), MetaSettings())
    trainer = MetaTrainer(module)
    ens = module.ensemble

    def step_vmap():
        users = gather_users(tensors, [t.support for t in tasks], [t.query for t in tasks], module.vocabulary,
                             module.device)
        rows = torch.unique(torch.cat([users.user(k)[0] for k in range(len(tasks))]))
        leaves, alphas = trainer._episode_leaves(rows)
        position = torch.searchsorted(rows, users.rows).clamp(max=len(rows) - 1)
        tables = {n: leaves[n][position] for n in module.tables}
        rates = {n: alphas[n][position] for n in module.tables}
        dense = {n: leaves[n] for n in module.dense}
        s, q = users.support, users.evaluation

        def user_loss(t_u, a_u, si, sw, sy, sm, qi, qw, qy, qm):
            params = {**dense, **t_u}
            g = grad(lambda p: ens.loss(p, Batch(si, sw), sy, sm, model_loss="mixture"))(params)
            adapted = {n: params[n] - (a_u[n] if n in a_u else alphas[n]) * g[n] for n in params}
            return ens.loss(adapted, Batch(qi, qw), qy, qm, model_loss="mixture")

        losses = vmap(user_loss)(tables, rates, s.ids, s.weights, s.labels, s.mask, q.ids, q.weights, q.labels,
                                 q.mask)
        losses.mean().backward()
        trainer._outer_step(rows, leaves, alphas)

    for name, fn in [("loop", lambda: trainer.meta_step(tensors, tasks)), ("vmap", step_vmap)] * 2:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        print(name, round(statistics.median(times) * 1000, 1), "ms", flush=True)


if __name__ == "__main__":
    main()
