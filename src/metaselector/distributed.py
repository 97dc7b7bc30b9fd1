"""Past one process: torch.distributed, launched by torchrun (gloo on CPU, nccl on CUDA).

    torchrun --nproc_per_node=N -m metaselector train ...

Every rank holds the data and the same replica of the parameters, and draws the same episode
and batch orders from the same seed. Meta-training splits each episode's users over the
ranks; pretraining splits each batch's rows. A rank differentiates its share of the loss
(divided by the episode's or batch's global size), the union of the rows every rank touched
is gathered, and the gradients (table rows over that union, dense parameters whole) are
summed over ranks in one flat buffer; then every rank takes the same optimizer step, so the
replicas stay equal. DistributedDataParallel is not used: it hooks the module's parameters,
and the meta-step's table gradients live on leaves gathered per episode, which it cannot see
(it is also known to misbehave with create_graph). Meta-testing shards users and gathers the
predictions. One process is the usual single run: every function here is then a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Group:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files, logs and shows progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


_group = Group()
# Bytes each rank has put into collectives, for the benchmark's exchange figures.
exchanged = {"bytes": 0}


def current() -> Group:
    return _group


def init_from_environment(device: str = "cpu") -> Group:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK,
    MASTER_ADDR, ...); a plain run stays one process. A rank that dies makes the others'
    collectives fail within METASELECTOR_DIST_TIMEOUT seconds (default 60) instead of hanging."""
    global _group
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get("METASELECTOR_DIST_TIMEOUT", "60")))
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)
    if dist.is_initialized():
        _group = Group(dist.get_rank(), dist.get_world_size())
    return _group


def shard(items: list) -> list:
    """This rank's share of `items` (every world-th, from its rank): uneven shares and empty ones
    are fine."""
    return items[_group.rank::_group.world] if _group.active else list(items)


def union_rows(local: torch.Tensor) -> torch.Tensor:
    """The sorted union of every rank's (sorted, unique) rows: sizes gathered, then the rows."""
    if not _group.active:
        return local
    sizes = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(_group.world)]
    dist.all_gather(sizes, torch.tensor([len(local)], dtype=torch.int64, device=local.device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.full((max(longest, 1),), -1, dtype=torch.int64, device=local.device)
    padded[:len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(_group.world)]
    dist.all_gather(gathered, padded)
    exchanged["bytes"] += 8 * (1 + len(padded)) * (_group.world - 1)
    rows = torch.unique(torch.cat(gathered))
    return rows[rows >= 0]


def sum_gradients(holders: list[torch.Tensor]) -> None:
    """Replace each tensor's .grad by its sum over ranks, all in one flat buffer. A missing
    .grad (no gradient on this rank) counts as zeros; it stays None only where no rank had a
    gradient, as one process would have it."""
    if not _group.active or not holders:
        return
    like = holders[0]
    present = torch.tensor([h.grad is not None for h in holders], dtype=like.dtype, device=like.device)
    flat = torch.cat([present, *[(h.grad if h.grad is not None else like.new_zeros(h.shape)).reshape(-1)
                                 for h in holders]])
    dist.all_reduce(flat)
    exchanged["bytes"] += flat.numel() * flat.element_size()
    offset = len(holders)
    for k, holder in enumerate(holders):
        size = holder.numel()
        holder.grad = flat[offset:offset + size].view(holder.shape) if flat[k] > 0 else None
        offset += size


def sum_scalar(value: float) -> float:
    if not _group.active:
        return value
    buffer = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(buffer)
    return float(buffer.item())


def gather_objects(local: list) -> list[list]:
    """Every rank's list, in rank order (on every rank)."""
    if not _group.active:
        return [local]
    out: list = [None] * _group.world
    dist.all_gather_object(out, local)
    return out


def from_main(value):
    """Rank 0's `value`, on every rank (e.g. whether rank 0 could claim the output folder)."""
    if not _group.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if _group.active:
        dist.barrier()


def leave() -> None:
    """Leave the process group at the end of a command (a no-op in one process)."""
    global _group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _group = Group()
