"""Operating the server: API keys with scopes, refusing an open non-loopback bind, deleting a
user's data durably, and a new model without a restart; all over real HTTP."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

import metaselector as ms

pytestmark = pytest.mark.slow
KEYS = {"score": "s" * 24, "writer": "w" * 24, "admin": "a" * 24}


def _headers(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def _body(events, user):
    rows = events[events.user == user]
    return {"user": user, "candidates": [{"item": str(i), "timestamp": int(t)} for i, t in
                                         zip(rows.item.iloc[-3:], rows.timestamp.iloc[-3:], strict=True)],
            "history": [{"item": str(i), "rating": float(r), "timestamp": int(t)} for i, r, t in
                        zip(rows.item.iloc[:10], rows.rating.iloc[:10], rows.timestamp.iloc[:10], strict=True)]}


def test_keys_and_scopes(model_dir, tmp_path, events, serve_process):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# who may do what\n{KEYS['score']} score\n{KEYS['writer']} score,events,history  # app\n"
                    f"{KEYS['admin']} admin\n")
    server = serve_process(model_dir, tmp_path / "h.sqlite", "--api-keys", str(keys))
    try:
        user = events.user.unique()[0]
        body = _body(events, user)
        assert server.post("/v1/score", body).status_code == 401
        assert server.post("/v1/score", body, headers={"Authorization": "Bearer " + "x" * 24}).status_code == 401
        assert server.post("/v1/score", body, headers=_headers("score")).status_code == 200
        events_body = {"user": user, "events": body["history"]}
        assert server.post("/v1/events", events_body, headers=_headers("score")).status_code == 403
        assert httpx.get(f"{server.url}/v1/users/{user}/history", headers=_headers("score")).status_code == 403
        assert server.post("/v1/events", events_body, headers=_headers("writer")).status_code == 200
        assert httpx.get(f"{server.url}/v1/users/{user}/history", headers=_headers("writer")).status_code == 200
        assert httpx.get(f"{server.url}/v1/model", headers=_headers("writer")).status_code == 403
        assert httpx.get(f"{server.url}/v1/model", headers=_headers("admin")).status_code == 200
        assert httpx.get(f"{server.url}/v1/health").status_code == 200  # open: no user data
    finally:
        server.stop()
    assert not any(key in server.log() for key in KEYS.values())  # keys are never logged


@pytest.mark.parametrize("keys_text,needle", [("short score\n", "at least 16"), (f"{'k' * 20} read\n", "scope 'read'"),
                                              ("# nothing\n", "no API key")])
def test_a_bad_keys_file_or_an_open_public_bind_is_refused(model_dir, tmp_path, keys_text, needle):
    (tmp_path / "keys.txt").write_text(keys_text)
    for args, expected in ((["--api-keys", str(tmp_path / "keys.txt")], needle),
                           (["--host", "0.0.0.0"], "--host 0.0.0.0: serving beyond this machine needs --api-keys")):
        result = subprocess.run([sys.executable, "-m", "metaselector", "serve", "--model", str(model_dir),
                                 "--history-db", str(tmp_path / "h.sqlite"), *args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_deleting_a_users_history_is_durable(model_dir, tmp_path, events, serve_process):
    db = tmp_path / "h.sqlite"
    server = serve_process(model_dir, db)
    user = events.user.unique()[1]
    body = _body(events, user)
    try:
        assert server.post("/v1/events", {"user": user, "events": body["history"]}).status_code == 200
        answer = httpx.delete(f"{server.url}/v1/users/{user}/history")
        assert answer.status_code == 200 and answer.json()["deleted"] == len(body["history"])
        os.kill(server.process.pid, signal.SIGKILL)  # right after the deletion was acknowledged
        server.process.wait()
        assert body["history"][0]["item"].encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("h.sqlite*"))
        server = serve_process(model_dir, db)
        assert httpx.get(f"{server.url}/v1/users/{user}/history").json()["events"] == []
        del body["history"]
        assert server.post("/v1/score", body).json()["adapted"] is False
    finally:
        server.stop()


def test_a_new_model_without_a_restart(model_dir, tmp_path, events, serve_process):
    second = tmp_path / "second"  # what a retrain writes: the same architecture, other weights
    torch.set_num_threads(1)
    shutil.copytree(model_dir, second)
    manifest = json.loads((second / "manifest.json").read_text())
    model = ms.MetaSelector.load(second)
    with torch.no_grad():
        for p in model.module_.params.values():
            p.mul_(0.5)
    model.save(second)
    assert json.loads((second / "manifest.json").read_text())["files"] != manifest["files"]
    server = serve_process(model_dir, tmp_path / "h.sqlite")
    try:
        bodies = [_body(events, u) for u in events.user.unique()[:8]]
        before = server.post("/v1/score", bodies[0]).json()["model"]
        stop, answers = threading.Event(), []

        def client(body):
            while not stop.is_set():
                answers.append(server.post("/v1/score", body))

        with ThreadPoolExecutor(16) as pool:
            for k in range(16):
                pool.submit(client, bodies[k % 8])
            damaged = tmp_path / "damaged"
            shutil.copytree(second, damaged)
            (damaged / "weights.safetensors").write_bytes(b"junk")
            refused = server.post("/v1/admin/reload", {"model": str(damaged)})
            reloaded = server.post("/v1/admin/reload", {"model": str(second)})
            after = len(answers)
            threading.Event().wait(2.0)
            stop.set()
        assert refused.status_code == 422 and "still serving" in refused.json()["detail"]
        assert reloaded.status_code == 200 and reloaded.json()["model"] != before
        assert answers and all(a.status_code == 200 for a in answers)
        assert {a.json()["model"] for a in answers[after + 16:]} == {reloaded.json()["model"]}
        assert httpx.get(f"{server.url}/v1/model").json()["files"] == json.loads(
            (second / "manifest.json").read_text())["files"]
    finally:
        server.stop()
