"""Serving past one process and one machine: Prometheus metrics, several worker processes over
one SQLite store, and several servers over one PostgreSQL store (a real server: the tests take
its URL from METASELECTOR_TEST_POSTGRES, which .ci/run sets, and are skipped, saying so, where
it is unset)."""

import os
import signal
import sqlite3
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow
POSTGRES = os.environ.get("METASELECTOR_TEST_POSTGRES")
needs_postgres = pytest.mark.skipif(not POSTGRES, reason="METASELECTOR_TEST_POSTGRES is unset: no PostgreSQL to test "
                                                         "the shared history store against")


def _events(events, user, n, offset=0):
    rows = events[events.user == user].iloc[offset:offset + n]
    return [{"item": str(i), "rating": float(r), "timestamp": int(t)}
            for i, r, t in zip(rows.item, rows.rating, rows.timestamp, strict=True)]


def _families(url: str) -> dict:
    text = httpx.get(f"{url}/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_in_prometheus_text_format(model_dir, tmp_path, events, serve_process):
    server = serve_process(model_dir, tmp_path / "h.sqlite")
    try:
        source, user = events.user.unique()[0], "a-private-user-id"
        body = {"user": user, "candidates": _events(events, source, 3, 20), "history": _events(events, source, 15)}
        for e in body["candidates"]:
            del e["rating"]
        for _ in range(3):
            assert server.post("/v1/score", body).status_code == 200
        assert server.post("/v1/events", {"user": user, "events": _events(events, source, 2)}).status_code == 200
        assert server.post("/v1/score", {"user": user}).status_code == 422
        families = _families(server.url)
        latency = families["metaselector_request_seconds"]
        assert latency.type == "histogram"
        counts = {s.labels["endpoint"]: s.value for s in latency.samples if s.name.endswith("_count")}
        assert counts["/v1/score"] == 4 and counts["/v1/events"] == 1
        statuses = {(s.labels["endpoint"], s.labels["status"]): s.value
                    for s in families["metaselector_requests"].samples if s.name.endswith("_total")}
        assert statuses[("/v1/score", "200")] == 3 and statuses[("/v1/score", "422")] == 1
        stages = {s.labels["stage"] for s in families["metaselector_stage_seconds"].samples}
        assert {"parse", "encode", "adapt_and_score"} <= stages
        assert "metaselector_batch_size" in families and "metaselector_store_write_seconds" in families
        text = httpx.get(f"{server.url}/metrics").text
        assert user not in text and "user=" not in text  # no user data
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_two_workers_store_every_acknowledged_event_exactly_once(model_dir, tmp_path, events, serve_process):
    db = tmp_path / "h.sqlite"
    server = serve_process(model_dir, db, "--workers", "2")
    try:
        users = [f"w{k}" for k in range(32)]
        source = events.user.unique()[0]

        def write(k):
            return server.post("/v1/events", {"user": users[k], "events": _events(events, source, 3, 3 * k)},
                               headers={"Idempotency-Key": f"key-{k}"})

        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(write, range(32)))
            retries = list(pool.map(write, range(32)))  # each write sent again with its key
        assert all(a.status_code == 200 for a in answers + retries)
        acknowledged = sum(a.json()["stored"] for a in answers)
        with sqlite3.connect(db) as check:
            stored = check.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        assert stored == acknowledged == 96
        served = {s.value for s in _families(server.url)["metaselector_requests"].samples
                  if s.name.endswith("_total") and s.labels["endpoint"] == "/v1/events"}
        assert served == {64.0}  # both workers' counts, added up
    finally:
        server.stop()


def _worker_pids(url: str, connections: int, replacing: bool = False) -> list[int]:
    """The worker that answers each of `connections` new connections. `replacing`: while a killed
    worker is being replaced, a connection the kernel had queued on its socket is reset (a
    client retries it): skipped."""
    pids = []
    for _ in range(connections):
        with httpx.Client() as client:  # a connection of its own
            try:
                pids.append(client.get(f"{url}/v1/health", timeout=10).json()["worker_pid"])
            except httpx.TransportError:
                if not replacing:
                    raise
    return pids


def test_workers_each_listen_so_connections_spread_and_one_that_dies_is_replaced(model_dir, tmp_path,
                                                                                 serve_process):
    server = serve_process(model_dir, tmp_path / "h.sqlite", "--workers", "2")
    try:
        # SO_REUSEPORT: the kernel hashes each connection to one worker's socket (both listen once
        # serve_process has started); all 24 on one worker would happen with probability 2 * 2**-24
        pids = _worker_pids(server.url, 24)
        assert len(set(pids)) == 2
        os.kill(pids[0], signal.SIGKILL)
        for _ in range(300):
            now = set(_worker_pids(server.url, 16, replacing=True))
            if len(now) == 2 and pids[0] not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and pids[0] not in now  # a new worker took its place
        assert "exited with status -9; starting another" in server.log()
    finally:
        server.stop()


def test_sighup_reloads_every_worker(model_dir, tmp_path, serve_process):
    import shutil

    import torch

    import metaselector as ms

    served = tmp_path / "served"
    shutil.copytree(model_dir, served)
    server = serve_process(served, tmp_path / "h.sqlite", "--workers", "2")
    try:
        before = httpx.get(f"{server.url}/v1/health").json()["model"]
        model = ms.MetaSelector.load(served)
        with torch.no_grad():
            for p in model.module_.params.values():
                p.mul_(0.5)
        model.save(served)  # a new model written where --model points
        os.kill(server.process.pid, signal.SIGHUP)  # to the parent, which passes it on
        for _ in range(300):
            seen = {}
            for _ in range(16):
                with httpx.Client() as client:
                    health = client.get(f"{server.url}/v1/health", timeout=10).json()
                seen[health["worker_pid"]] = health["model"]
            if len(seen) == 2 and before not in seen.values():
                break
            time.sleep(0.2)
        assert len(seen) == 2 and before not in seen.values() and len(set(seen.values())) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("where", ["process", "thread"])
def test_scoring_runs_torch_with_its_threads_and_the_event_loop_with_one(model_dir, tmp_path, events, serve_process,
                                                                        where):
    """--threads is the scorer's (a scoring process, or with --scoring-in-thread the batching
    thread); the event loop (and model loading) keep one torch thread, so OpenMP never holds
    more threads than the scorer asked for (see scoring_process.load_on_one_thread). Also after a
    reload, which loads on another thread."""
    options = ["--threads", "2"] + (["--scoring-in-thread"] if where == "thread" else [])
    server = serve_process(model_dir, tmp_path / "h.sqlite", *options)
    try:
        user = str(events.user.iloc[0])
        body = {"user": user, "history": _events(events, user, 5), "candidates": [{"item": "1", "timestamp": 1}]}
        assert server.post("/v1/score", body).status_code == 200
        health = httpx.get(f"{server.url}/v1/health").json()
        assert health["scoring_in"] == where
        assert (health["scoring_pid"] != health["worker_pid"]) == (where == "process")
        assert health["torch_threads"] == {"scoring": 2, "event_loop": 1}
        assert server.post("/v1/admin/reload", {"model": str(model_dir)}).status_code == 200
        assert server.post("/v1/score", body).status_code == 200
        assert httpx.get(f"{server.url}/v1/health").json()["torch_threads"] == {"scoring": 2, "event_loop": 1}
    finally:
        server.stop()


def test_a_scoring_process_that_dies_is_replaced(model_dir, tmp_path, events, serve_process):
    """SIGKILL to the scoring process: the worker starts another (same model, same answers), and
    health says 503 only while there is none."""
    server = serve_process(model_dir, tmp_path / "h.sqlite")
    try:
        user = str(events.user.iloc[0])
        body = {"user": user, "history": _events(events, user, 8), "candidates": [{"item": "1", "timestamp": 1}]}
        before = server.post("/v1/score", body).json()
        first = httpx.get(f"{server.url}/v1/health").json()
        os.kill(first["scoring_pid"], signal.SIGKILL)
        for _ in range(300):
            health = httpx.get(f"{server.url}/v1/health", timeout=10)
            if health.status_code == 200 and health.json()["scoring_pid"] != first["scoring_pid"]:
                break
            time.sleep(0.1)
        assert health.status_code == 200 and health.json()["scoring_restarts"] == 1
        assert server.post("/v1/score", body).json() == before
        assert "started another" in server.log()
    finally:
        server.stop()


@needs_postgres
def test_postgres_store_caps_idempotency_and_deletion():
    from metaselector.serving.postgres_store import PostgresHistoryStore

    store = PostgresHistoryStore(POSTGRES, keep=5, max_user_bytes=10_000)
    user = f"pg-{uuid.uuid4().hex}"
    try:
        assert store.append(user, [{"item": str(i), "rating": 4, "timestamp": 1000 + i} for i in range(8)]) == (8, 5)
        assert [e["item"] for e in store.recent(user)] == ["3", "4", "5", "6", "7"]
        assert all(e["user"] == user for e in store.recent(user))
        once = store.append(user, [{"item": "x", "rating": 4, "timestamp": 2000}], key="k")
        assert store.append(user, [{"item": "x", "rating": 4, "timestamp": 2000}], key="k") == once
        assert store.delete(user) == 5 and store.recent(user) == []
    finally:
        store.delete(user)
        store.close()


@needs_postgres
def test_two_servers_share_one_postgres_history(model_dir, tmp_path, events, serve_process):
    first = serve_process(model_dir, POSTGRES, "--max-batch", "4")
    second = serve_process(model_dir, POSTGRES)
    user = f"shared-{uuid.uuid4().hex[:8]}"
    try:
        source = events.user.unique()[2]
        history = _events(events, source, 20)
        candidates = [{k: v for k, v in e.items() if k != "rating"} for e in _events(events, source, 3, 20)]
        alone = second.post("/v1/score", {"user": user, "candidates": candidates}).json()
        assert alone["adapted"] is False
        assert first.post("/v1/events", {"user": user, "events": history}).status_code == 200
        os.kill(first.process.pid, signal.SIGKILL)  # right after the acknowledgement
        first.process.wait()
        shared = second.post("/v1/score", {"user": user, "candidates": candidates}).json()
        given = second.post("/v1/score", {"user": user, "candidates": candidates, "history": history}).json()
        assert shared["adapted"] and shared["history_events"] == len(history)
        assert shared["scores"] == pytest.approx(given["scores"], abs=1e-6)
    finally:
        httpx.delete(f"{second.url}/v1/users/{user}/history")
        first.stop()
        second.stop()
