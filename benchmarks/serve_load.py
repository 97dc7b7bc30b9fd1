"""Load on `metaselector serve` over 127.0.0.1: closed loops, an open loop, a soak.

The model has the default architecture, trained on ml-latest-small for one epoch per stage
(weights do not change the cost). Each request is one user of ml-latest-small: their 50 latest
ratings as history and 100 candidates. Two servers run in turn, the same model and settings
but for batching: `--max-batch 64` and `--max-batch 1`. For each: closed loops at concurrency
1, 8 and 32 (each client sends its next request when the last is answered), then, for the
batching server, an open loop at a fixed arrival rate (latency counted from each request's
scheduled time, so a slow answer cannot hide the requests it delays) and a soak whose server
RSS is read at its start and end. The client runs on the same 2 cores: its CPU share is
reported. A request's time is also broken down in this process (parse, encode, adapt, score).

    python -m benchmarks.serve_load --json [--seconds 20] [--soak 120] [--rate 40]
    python -m benchmarks.serve_load --workload mixed --concurrency 32 --soak 0 --rate 0   (batching, real lengths)
    python -m benchmarks.serve_load --workers 1 2 --threads 1 --concurrency 32 --soak 0 --rate 0 \
        [--stored-history --history-db postgresql://USER@127.0.0.1/test]                (workers, stores)
With several workers, the batch sizes reported are those of the worker that answered /v1/health.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import torch

import metaselector as ms
from benchmarks.score import requests_for


def _body(h: pd.DataFrame, c: pd.DataFrame) -> dict:
    return {"user": str(h["user"].iloc[0]),
            "history": [{"item": str(i), "label": int(y), "timestamp": int(t)}
                        for i, y, t in zip(h["item"], h["label"], h["timestamp"], strict=True)],
            "candidates": [{"item": str(i), "timestamp": int(t)}
                           for i, t in zip(c["item"], c["timestamp"], strict=True)]}


def bodies(data, history: int = 50, candidates: int = 100) -> list[dict]:
    """The uniform workload: every user's 50 latest events, 100 catalogue items as candidates."""
    return [_body(h, c) for h, c in requests_for(data, history, candidates)]


def mixed_bodies(data, longest: int = 150, candidates: int = 100) -> list[dict]:
    """The real, mixed-length workload: each user's own events split 80/20 by time; the first
    80% (at most the latest `longest`) as history, the rest (at most `candidates`) as candidates."""
    vocab = data.encoder.vocabularies
    events = pd.DataFrame({"user": np.asarray(vocab["@user"])[data.users],
                           "item": np.asarray(vocab["@item"])[data.items],
                           "label": data.labels, "timestamp": data.timestamps})
    out = []
    for _, rows in events.groupby("user", sort=False):
        rows = rows.sort_values("timestamp", kind="stable")
        cut = max(1, int(len(rows) * 0.8))
        out.append(_body(rows.iloc[:cut].tail(longest), rows.iloc[cut:].head(candidates)))
    # a fixed random order, so that the clients' requests mix short and long histories
    order = np.random.default_rng(0).permutation(len(out))
    return [out[i] for i in order]


def stored(url: str, requests: list[dict]) -> list[dict]:
    """Write each user's history to the server's history store (deleted first, so that a shared
    PostgreSQL store starts equal on every run) and return the requests without it: each score
    then reads the user's history from the store."""
    with httpx.Client(timeout=60) as client:
        for request in requests:
            client.delete(f"{url}/v1/users/{request['user']}/history").raise_for_status()
            client.post(f"{url}/v1/events", json={"user": request["user"], "events": request["history"]}
                        ).raise_for_status()
    return [{k: v for k, v in request.items() if k != "history"} for request in requests]


class ServerProcess:
    def __init__(self, model: Path, db: Path | str, max_batch: int, threads: int, workers: int = 1,
                 extra: tuple[str, ...] = ()) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "metaselector", "serve", "--model", str(model),
                                         "--port", str(self.port), "--history-db", str(db), "--threads", str(threads),
                                         "--max-batch", str(max_batch), "--queue-size", "1024",
                                         "--workers", str(workers), *extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        for _ in range(600):
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def rss_mb(self) -> float:
        """Resident memory of the server and its worker and scoring processes (its process group)."""
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != self.process.pid:
                    continue
                status = (entry / "status").read_text().splitlines()
            except OSError:
                continue
            total += next((int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:")), 0.0)
        return total

    def cpu_seconds(self) -> float:
        """utime + stime of the server and its worker processes (its process group)."""
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == self.process.pid:  # pgrp: the server's own session
                total += (int(fields[11]) + int(fields[12])) / 100  # clock ticks of 1/100 s
        return total

    def health(self) -> dict:
        return httpx.get(f"{self.url}/v1/health", timeout=10).json()

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        self.process.wait()


def percentiles(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    values = np.percentile(np.asarray(latencies) * 1000, [50, 95, 99])
    return {"p50_ms": float(values[0]), "p95_ms": float(values[1]), "p99_ms": float(values[2])}


async def closed_loop(url: str, requests: list[dict], concurrency: int, seconds: float) -> dict:
    latencies, errors = [], 0
    stop = time.perf_counter() + seconds

    async def client(k: int, session: httpx.AsyncClient) -> None:
        nonlocal errors
        index = k
        while time.perf_counter() < stop:
            start = time.perf_counter()
            try:
                answer = await session.post(f"{url}/v1/score", json=requests[index % len(requests)])
                if answer.status_code != 200:
                    errors += 1
                else:
                    latencies.append(time.perf_counter() - start)
            except httpx.HTTPError:
                errors += 1
            index += concurrency

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        await asyncio.gather(*(client(k, session) for k in range(concurrency)))
    wall = time.perf_counter() - start
    return {"concurrency": concurrency, "requests": len(latencies), "errors": errors,
            "users_per_second": len(latencies) / wall, **percentiles(latencies)}


async def open_loop(url: str, requests: list[dict], rate: float, seconds: float) -> dict:
    latencies, errors = [], 0
    start = time.perf_counter()
    count = int(rate * seconds)

    async def one(k: int, session: httpx.AsyncClient) -> None:
        nonlocal errors
        scheduled = start + k / rate
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        try:
            answer = await session.post(f"{url}/v1/score", json=requests[k % len(requests)])
            if answer.status_code == 200:
                latencies.append(time.perf_counter() - scheduled)
            else:
                errors += 1
        except httpx.HTTPError:
            errors += 1

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=256)) as session:
        await asyncio.gather(*(one(k, session) for k in range(count)))
    return {"rate_per_second": rate, "requests": len(latencies), "errors": errors,
            "users_per_second": len(latencies) / (time.perf_counter() - start), **percentiles(latencies)}


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(server: ServerProcess, run, warmup: tuple | None = None) -> dict:
    """Run a load phase; add batch sizes reached and both processes' CPU share of the 2 cores.
    `warmup`: (requests, concurrency, seconds) of closed loop first, not counted (a new scoring
    process's first batches run slower)."""
    if warmup is not None and warmup[2] > 0:
        asyncio.run(closed_loop(server.url, *warmup))
    before, server_before, client_before = server.health()["batch_sizes"], server.cpu_seconds(), client_cpu()
    start = time.perf_counter()
    result = asyncio.run(run)
    wall = time.perf_counter() - start
    after = server.health()["batch_sizes"]
    reached = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}
    sizes = [int(k) for k in reached]
    result.update({"batch_sizes": reached, "largest_batch": max(sizes) if sizes else 0,
                   "client_cpu_share": (client_cpu() - client_before) / wall / 2,
                   "server_cpu_share": (server.cpu_seconds() - server_before) / wall / 2})
    return result


def breakdown(model, body: dict, rounds: int = 20) -> dict:
    """Where one request's time goes, in this process: parse, encode, adapt + score, score alone."""
    from metaselector.selection.tasks import UserTask
    from metaselector.serving.schemas import RequestModels, declared_columns, labelled
    from metaselector.training.tensors import TensorData

    schemas = RequestModels(declared_columns(model.encoder_), 1000, 1000)
    threshold = model.encoder_.label_rule.threshold
    times = {"parse": [], "encode": [], "adapt_and_score": [], "score_only": []}
    for _ in range(rounds):
        start = time.perf_counter()
        request = schemas.score.model_validate_json(json.dumps(body))
        history = pd.DataFrame([{**e, "user": str(request.user)} for e in labelled(request.history, threshold)])
        candidates = pd.DataFrame([{**c.model_dump(), "user": str(request.user)} for c in request.candidates])
        times["parse"].append(time.perf_counter() - start)
        start = time.perf_counter()
        events = pd.concat([history, candidates], ignore_index=True)
        encoded = model.encoder_.encode(events, groups=np.zeros(len(events)))
        tensors = TensorData(torch.from_numpy(encoded.ids), torch.from_numpy(encoded.weights),
                             torch.from_numpy(np.nan_to_num(encoded.labels)),
                             torch.zeros(len(events), dtype=torch.int64))
        times["encode"].append(time.perf_counter() - start)
        task = UserTask(0, np.arange(len(history)), np.arange(len(history), len(events)))
        for key, adapt in (("adapt_and_score", True), ("score_only", False)):
            start = time.perf_counter()
            model.module_.predict(tensors, [task], [task.query], adapt=adapt)
            times[key].append(time.perf_counter() - start)
    out = {f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}
    out["adapt_ms"] = out["adapt_and_score_ms"] - out["score_only_ms"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20.0, help="per closed-loop level")
    parser.add_argument("--soak", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=40.0, help="open-loop arrivals per second")
    parser.add_argument("--threads", type=int, default=2, help="server torch threads")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[],
                        help="also measure the batching server with these worker counts at 32 clients")
    parser.add_argument("--history-db", default=None, help="e.g. postgresql://USER@HOST/DB (default: SQLite files)")
    parser.add_argument("--workload", choices=["uniform", "mixed"], default="uniform",
                        help="uniform: 50-event histories, 100 candidates; mixed: each user's real history (80%% "
                             "of their events, at most 150) and real candidates (the rest, at most 100)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="closed-loop levels")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of closed loop before each server's "
                                                                    "first measured phase (not counted)")
    parser.add_argument("--scoring-in-thread", action="store_true", help="serve with --scoring-in-thread")
    parser.add_argument("--stored-history", action="store_true",
                        help="histories written to the store first (POST /v1/events); scores read them from it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extra = ("--scoring-in-thread",) if args.scoring_in_thread else ()
    data = ms.load_data("ml-latest-small")
    requests = bodies(data) if args.workload == "uniform" else mixed_bodies(data)
    lengths = [len(r["history"]) for r in requests]
    report: dict = {"users": len(requests), "workload": args.workload, "server_threads": args.threads,
                    "history_events": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)},
                    "candidates": {"min": min(len(r["candidates"]) for r in requests),
                                   "max": max(len(r["candidates"]) for r in requests)},
                    "history_db": "postgresql" if args.history_db else "sqlite",
                    "history_from": "store" if args.stored_history else "request",
                    "scoring_in": "thread" if args.scoring_in_thread else "process", "warmup_seconds": args.warmup}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        ms.MetaSelector(config={"pretrain": {"epochs": 1}, "meta": {"epochs": 1, "max_episodes": 20}}).fit(
            data).save(model_dir)
        report["breakdown_single_request"] = breakdown(ms.MetaSelector.load(model_dir), requests[0])
        for workers in args.workers:
            server = ServerProcess(model_dir, args.history_db or Path(tmp) / f"w{workers}.sqlite", 64, args.threads,
                                   workers, extra)
            try:
                load = stored(server.url, requests) if args.stored_history else requests
                report[f"workers_{workers}"] = measured(server, closed_loop(server.url, load, 32, args.seconds),
                                                        (load, 32, args.warmup))
            finally:
                server.stop()
        for max_batch in (64, 1):
            server = ServerProcess(model_dir, args.history_db or Path(tmp) / f"h{max_batch}.sqlite", max_batch,
                                   args.threads, extra=extra)
            try:
                load = stored(server.url, requests) if args.stored_history else requests
                levels = [measured(server, closed_loop(server.url, load, c, args.seconds),
                                   (load, c, args.warmup) if k == 0 else None)
                          for k, c in enumerate(args.concurrency)]
                entry = {"closed_loop": levels}
                if max_batch > 1 and args.rate > 0:
                    entry["open_loop"] = measured(server, open_loop(server.url, load, args.rate, args.seconds))
                if max_batch > 1 and args.soak > 0:
                    rss_start = server.rss_mb()
                    entry["soak"] = measured(server, closed_loop(server.url, load, 32, args.soak))
                    entry["soak"].update({"rss_start_mb": rss_start, "rss_end_mb": server.rss_mb(),
                                          "rss_growth": server.rss_mb() / rss_start - 1, "seconds": args.soak})
                report[f"max_batch_{max_batch}"] = entry
            finally:
                server.stop()
    top = max(args.concurrency)
    batched = report["max_batch_64"]["closed_loop"][-1]["users_per_second"]
    single = report["max_batch_1"]["closed_loop"][-1]["users_per_second"]
    report[f"concurrency_{top}_speedup_from_batching"] = batched / single
    if len(args.workers) > 1:
        first, last = args.workers[0], args.workers[-1]
        report[f"workers_{last}_over_{first}"] = (report[f"workers_{last}"]["users_per_second"] /
                                                  report[f"workers_{first}"]["users_per_second"])
    print(json.dumps(report, indent=None if args.json else 1))


if __name__ == "__main__":
    main()
