"""Named random streams: every stage of a run draws from its own child of one
`numpy.random.SeedSequence(seed)`, so no code does arithmetic on the seed, adding a stage never
shifts another stage's numbers, and anyone can tell which stage owns which numbers.

The child for a stage is `SeedSequence(seed, spawn_key=(k, *index))`, which is exactly child k
of `SeedSequence(seed).spawn(...)` (and its children by `index`, e.g. one per base model): k is
the stage's position in STREAMS, so names are only ever appended there.
"""

from __future__ import annotations

import numpy as np

STREAMS = (
    "split",  # per-user train/test and support/query division
    "holdout",  # the base models' shared validation slice of the support rows
    "validation-users",  # training users held out of meta-training
    "check-users",  # users whose held-out rows judge meta-training
    "model-init",  # each base model's initial weights (index: the model's position)
    "batch-order",  # each base model's pretraining batches (index: model, then 0 support / 1 continued)
    "dropout",  # torch's global generator: dropout masks during pretraining
    "selector-init",  # the user-level selector's initial weights
    "episodes",  # the order of users in meta-training episodes
    "sample-level",  # the sample-level selector (index: 0 init, 1 batch order)
    "simplified",  # MetaSelector-Simplified's episode order
    "split-half",  # the split-half oracle's halves
    "tune",  # `metaselector tune`'s sampler (index: the model's position)
)


def stream(seed: int, name: str, *index: int) -> np.random.SeedSequence:
    """The SeedSequence of stage `name` (and sub-stream `index`) for a run's `seed`."""
    return np.random.SeedSequence(seed, spawn_key=(STREAMS.index(name), *index))


def generator(seed: int, name: str, *index: int) -> np.random.Generator:
    return np.random.default_rng(stream(seed, name, *index))


def int_seed(seed: int, name: str, *index: int) -> int:
    """A 63-bit integer from the stream, for APIs that take one (torch.manual_seed, Generator)."""
    return int(stream(seed, name, *index).generate_state(1, np.uint64)[0] >> np.uint64(1))
