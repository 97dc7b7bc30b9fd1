"""`metaselector serve` over real HTTP (httpx) with a real SQLite history store."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest

import metaselector as ms

pytestmark = pytest.mark.slow


@pytest.fixture
def server(model_dir, tmp_path, serve_process):
    s = serve_process(model_dir, tmp_path / "history.sqlite")
    yield s
    s.stop()


def _request(events: pd.DataFrame, user: str, with_history: bool = True) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    rows = events[events.user == user]
    history, candidates = rows.iloc[:-5], rows.iloc[-5:][["user", "item", "timestamp"]]
    body = {"user": int(user), "candidates": [{"item": int(i), "timestamp": int(t)}
                                              for i, t in zip(candidates.item, candidates.timestamp, strict=True)]}
    if with_history:
        body["history"] = [{"item": str(i), "rating": float(r), "timestamp": int(t)}
                           for i, r, t in zip(history.item, history.rating, history.timestamp, strict=True)]
    return body, history, candidates


def test_scores_equal_offline_predictions(server, model_dir, events):
    model = ms.MetaSelector.load(model_dir)
    for user in events.user.unique()[:3]:
        body, history, candidates = _request(events, user)
        answer = server.post("/v1/score", body)
        assert answer.status_code == 200, answer.text
        result = answer.json()
        np.testing.assert_allclose(result["scores"], model.predict_proba(candidates, history), atol=1e-6)
        assert result["adapted"] and result["history_events"] == len(history)
        assert np.allclose(np.sum(result["weights"], axis=1), 1.0) and len(result["weights"][0]) == 4
    assert httpx.get(f"{server.url}/v1/model").json()["base_models"] == ["LR", "FM", "FFM", "DeepFM"]
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_stored_history_is_used_and_survives_kill_9(model_dir, tmp_path, events, serve_process):
    db = tmp_path / "history.sqlite"
    server = serve_process(model_dir, db)
    user = events.user.unique()[4]
    body, history, candidates = _request(events, user, with_history=False)
    stranger = server.post("/v1/score", {**body, "user": "stranger"}).json()
    assert stranger["adapted"] is False and stranger["history_events"] == 0
    stored = [{"item": str(i), "rating": float(r), "timestamp": int(t)}
              for i, r, t in zip(history.item, history.rating, history.timestamp, strict=True)]
    answer = server.post("/v1/events", {"user": user, "events": stored})
    assert answer.status_code == 200 and answer.json()["history_events"] == len(stored)
    os.kill(server.process.pid, signal.SIGKILL)  # right after the acknowledgement
    server.process.wait()
    server = serve_process(model_dir, db)
    try:
        kept = httpx.get(f"{server.url}/v1/users/{user}/history").json()["events"]
        assert [e["item"] for e in kept] == [e["item"] for e in stored]
        result = server.post("/v1/score", body).json()
        expected = ms.MetaSelector.load(model_dir).predict_proba(candidates, history)
        np.testing.assert_allclose(result["scores"], expected, atol=1e-6)
        assert result["adapted"] and result["history_events"] == len(stored)
    finally:
        server.stop()


def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(model_dir, tmp_path, events, serve_process):
    server = serve_process(model_dir, tmp_path / "h.sqlite", "--max-candidates", "5", "--max-body-bytes", "4000")
    try:
        good, _, _ = _request(events, events.user.unique()[0])
        good["history"] = good["history"][:10]
        cases = [
            (httpx.post(f"{server.url}/v1/score", content=b"{not json", timeout=10), 422, "body"),
            (server.post("/v1/score", {"candidates": good["candidates"]}), 422, "user"),
            (server.post("/v1/score", {**good, "candidates": [{"item": 1, "timestamp": "soon"}]}), 422,
             "candidates.0.timestamp"),
            (server.post("/v1/score", {**good, "candidates": []}), 422, "candidates"),
            (server.post("/v1/score", {**good, "user": [1]}), 422, "user"),
            (server.post("/v1/score", {**good, "history": [{"item": 1, "timestamp": 5}]}), 422, "history[0]"),
            (server.post("/v1/score", {**good, "candidates": good["candidates"] * 2}), 413, "candidates"),
            (server.post("/v1/score", {**good, "history": good["history"] * 20}), 413, "4000 bytes"),
            (server.post("/v1/events", {"user": 1, "events": [{"item": 1, "rating": "x", "timestamp": 1}]}), 422,
             "events.0.rating"),
            (server.post("/v1/events", {"user": 1, "events": [{"item": 1, "rating": 5, "timestamp": 1e30}]}), 422,
             "events.0.timestamp"),
        ]
        for answer, status, field in cases:
            assert answer.status_code == status, (field, answer.text)
            assert field in answer.json()["detail"], (field, answer.json())
        answer = server.post("/v1/score", {**good, "candidates": [{"item": "never-seen", "timestamp": 1}]})
        assert answer.status_code == 200  # unknown items are not errors: counted
        health = httpx.get(f"{server.url}/v1/health").json()
        assert health["unknown_items"] >= 1 and health["invalid_requests"] >= 6
        assert server.post("/v1/score", good).status_code == 200
    finally:
        server.stop()


def test_32_concurrent_clients_get_correct_scores(server, model_dir, events):
    model = ms.MetaSelector.load(model_dir)
    users = list(events.user.unique()[:8]) * 4
    requests = [_request(events, u) for u in users]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda r: server.post("/v1/score", r[0]), requests))
    assert all(a.status_code == 200 for a in answers)
    for answer, (_, history, candidates) in zip(answers, requests, strict=True):
        np.testing.assert_allclose(answer.json()["scores"], model.predict_proba(candidates, history), atol=1e-6)
    sizes = httpx.get(f"{server.url}/v1/health").json()["batch_sizes"]
    assert sum(int(k) * v for k, v in sizes.items()) == 32


def test_a_flood_on_a_tiny_queue_gets_503_with_retry_after(model_dir, tmp_path, events, serve_process):
    server = serve_process(model_dir, tmp_path / "h.sqlite", "--queue-size", "1", "--max-batch", "1")
    try:
        body, _, _ = _request(events, events.user.unique()[0])
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda _: server.post("/v1/score", body), range(96)))
        codes = [a.status_code for a in answers]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
        assert all(a.headers["retry-after"] == "1" for a in answers if a.status_code == 503)
        assert server.post("/v1/score", body).status_code == 200
    finally:
        server.stop()


def test_sigterm_lets_in_flight_requests_finish(model_dir, tmp_path, events, serve_process):
    server = serve_process(model_dir, tmp_path / "h.sqlite", "--max-batch", "1")
    user = events.user.unique()[0]
    body, _, _ = _request(events, user)
    assert server.post("/v1/events", {"user": "someone", "events": body["history"][:3]}).status_code == 200
    assert (tmp_path / "h.sqlite-wal").exists()
    body["candidates"] = body["candidates"] * 150  # slow enough to be in flight
    finished = []

    def call(_):
        answer = server.post("/v1/score", body)
        finished.append(time.monotonic())
        return answer

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(call, k) for k in range(12)]
        time.sleep(0.5)
        sent = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    assert all(a.status_code == 200 for a in answers)
    assert any(t > sent for t in finished)  # some were answered after the signal
    # uvicorn shuts down gracefully, then exits by the signal it caught (status -15), as servers do
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not (tmp_path / "h.sqlite-wal").exists()  # the store was closed cleanly (WAL checkpointed)
