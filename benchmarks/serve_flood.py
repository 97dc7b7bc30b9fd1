"""A flood of 1 MB request bodies against `metaselector serve` on 127.0.0.1, with ordinary scoring
requests sent alongside: the server's resident memory (its peak over the flood against its idle
value after warm-up) and every answer's status (a 500 or a dropped connection would be a fault).

    python -m benchmarks.serve_flood [--seconds 120] [--clients 64] [--threads 2] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

import metaselector as ms
from benchmarks.serve_load import ServerProcess, bodies


def junk(k: int, size: int) -> bytes:
    """About `size` bytes: alternately a well-formed request with one huge field, and broken JSON."""
    if k % 2:
        return b'{"user": "flood", "candidates": [{"item": "' + b"x" * (size - 60) + b'", "timestamp": 1}]}'
    return b'{"user": "flood", "events": [' + b"[" * (size - 40)


async def flood(url: str, seconds: float, clients: int, size: int, statuses: Counter) -> None:
    end = time.monotonic() + seconds

    async def one(k: int, session: httpx.AsyncClient) -> None:
        body = junk(k, size)
        while time.monotonic() < end:
            try:
                answer = await session.post(f"{url}/v1/events", content=body,
                                            headers={"content-type": "application/json"})
                statuses[f"flood {answer.status_code}"] += 1
            except httpx.HTTPError as err:
                statuses[f"flood {err.__class__.__name__}"] += 1

    async def ordinary(session: httpx.AsyncClient, requests: list[dict]) -> None:
        k = 0
        while time.monotonic() < end:
            try:
                answer = await session.post(f"{url}/v1/score", json=requests[k % len(requests)])
                statuses[f"ordinary {answer.status_code}"] += 1
            except httpx.HTTPError as err:
                statuses[f"ordinary {err.__class__.__name__}"] += 1
            k += 1

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as session:
        requests = bodies(ms.load_data("ml-latest-small"))
        await asyncio.gather(*(one(k, session) for k in range(clients)), ordinary(session, requests))


async def sample_rss(server: ServerProcess, seconds: float, peaks: list[float]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peaks.append(server.rss_mb())
        await asyncio.sleep(0.25)


async def run(server: ServerProcess, seconds: float, clients: int, size: int) -> tuple[Counter, list[float]]:
    statuses, peaks = Counter(), []
    await asyncio.gather(flood(server.url, seconds, clients, size, statuses), sample_rss(server, seconds, peaks))
    return statuses, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = Path(tmp) / "model"
            ms.MetaSelector(config={"pretrain": {"epochs": 1}, "meta": {"epochs": 1, "max_episodes": 20}}).fit(
                ms.load_data("ml-latest-small")).save(model)
        server = ServerProcess(model, Path(tmp) / "h.sqlite", 64, args.threads)
        try:
            warm = bodies(ms.load_data("ml-latest-small"))[:50]
            for body in warm:  # warm every path an ordinary request takes
                httpx.post(f"{server.url}/v1/score", json=body, timeout=60)
            idle = server.rss_mb()
            statuses, peaks = asyncio.run(run(server, args.seconds, args.clients, (1 << 20) - 100))
            after = server.rss_mb()
        finally:
            server.stop()
    print(json.dumps({"idle_rss_mb": idle, "peak_rss_mb": max(peaks), "peak_over_idle": max(peaks) / idle,
                      "rss_after_mb": after, "statuses": dict(sorted(statuses.items())), "seconds": args.seconds,
                      "clients": args.clients, "body_bytes": (1 << 20) - 100}, indent=1))


if __name__ == "__main__":
    main()
