"""The user profile's cost: ml-latest-small's users profiled from all their ratings, all users in
one call (what meta-testing and a scoring batch do) against one call per user (a request of one).

    python -m benchmarks.user_profile --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from metaselector.data.loading import load_dataset
from metaselector.selection.user_profile import UserProfile
from metaselector.training.tensors import TensorData


def timed(call, rounds: int) -> float:
    """Median seconds of `rounds` calls."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("ml-latest-small", None, log=lambda m: None)
    tensors = TensorData.from_encoded(data)
    users = np.split(np.arange(len(data.users)), np.flatnonzero(np.diff(data.users)) + 1)
    profile = UserProfile.fit(data.layout, tensors, users)
    together = timed(lambda: profile.features(tensors, users), args.rounds)
    alone = timed(lambda: [profile.features(tensors, [rows]) for rows in users], args.rounds)
    print(f"{len(users)} users, {len(data.users)} rows: all at once {together * 1e3:.1f} ms "
          f"({together / len(users) * 1e6:.1f} us a user); one call per user {alone * 1e3:.1f} ms "
          f"({alone / len(users) * 1e6:.1f} us a user); median of {args.rounds}")


if __name__ == "__main__":
    main()
