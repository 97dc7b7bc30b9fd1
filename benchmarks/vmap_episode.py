"""Measured alternative: the episode batched over users with torch.func.vmap (padded users)
against the per-user loop MetaLearner uses. Uniform user sizes (100 support, 33 query), which
favours vmap; real users differ in size and would be padded to the largest of the episode.

    python benchmarks/vmap_episode.py vocab_14k 2
"""
import statistics
import sys
import time

import torch

sys.path.insert(0, '.')
from torch.func import grad, vmap

from benchmarks.meta_episode import build, make_episode
from metaselector.models.base import Batch
from metaselector.selection.meta import MetaLearner, MetaSettings

torch.set_num_threads(int(sys.argv[2]))
vocab = sys.argv[1]
layout, tensors, tasks = make_episode(vocab)
learner = MetaLearner(build(layout, vocab), MetaSettings())
ens = learner.ensemble
def step_vmap():
    batches = learner._batches(tensors, tasks, [t.query for t in tasks])
    rows = torch.unique(torch.cat([torch.cat([b[0].ids.flatten(), b[2].ids.flatten()]) for b in batches]))
    leaves, alphas = learner._episode_leaves(rows, train=True)
    per_user = [torch.unique(torch.cat([b[0].ids.flatten(), b[2].ids.flatten()])) for b in batches]
    rmax = max(len(u) for u in per_user)
    pos = torch.zeros(len(batches), rmax, dtype=torch.long)
    s_ids, q_ids = [], []
    for k, (u, b) in enumerate(zip(per_user, batches, strict=True)):
        pos[k, :len(u)] = torch.searchsorted(rows, u)
        s_ids.append(torch.searchsorted(u, b[0].ids))
        q_ids.append(torch.searchsorted(u, b[2].ids))
    s_ids, q_ids = torch.stack(s_ids), torch.stack(q_ids)
    s_w = torch.stack([b[0].weights for b in batches])
    q_w = torch.stack([b[2].weights for b in batches])
    s_y = torch.stack([b[1] for b in batches])
    q_y = torch.stack([b[3] for b in batches])
    tables = {n: leaves[n][pos] for n in learner.tables}
    rates = {n: alphas[n][pos] for n in learner.tables}
    dense = {n: leaves[n] for n in learner.dense}
    def user_loss(t_u, a_u, si, sw, sy, qi, qw, qy):
        params = {**dense, **t_u}
        g = grad(lambda p: ens.loss(p, Batch(si, sw), sy))(params)
        adapted = {n: params[n] - (a_u[n] if n in a_u else alphas[n]) * g[n] for n in params}
        return ens.loss(adapted, Batch(qi, qw), qy)
    losses = vmap(user_loss)(tables, rates, s_ids, s_w, s_y, q_ids, q_w, q_y)
    losses.mean().backward()
    learner._outer_step(rows, leaves, alphas)
for name, fn in [("loop", lambda: learner.meta_step(tensors, tasks)), ("vmap", step_vmap)] * 2:
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    print(name, round(statistics.median(ts) * 1000, 1), "ms", flush=True)
