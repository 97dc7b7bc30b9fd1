"""Where a worker's batches are adapted and scored: a child process of its own (`serve`'s
default), or the batching thread itself (a model given as an object, `--scoring-in-thread`).

Why a process: adapting a batch is mostly Python (torch.func's vmap and grad dispatch), and so
is answering HTTP (parsing, validation, JSON). In one process they share one interpreter lock:
a worker kept about one core busy whatever `--threads` said (server CPU share 0.50 of 2 cores at
`--threads 1`, the scoring thread busy all the time), and every request parsed slowed the
batch being scored. In a child, scoring has an interpreter of its own; the worker's batching
thread sends a batch down a pipe and waits for the answer, which releases the lock.

What crosses the pipe is plain columns (a dict of lists per request: about a hundredth of the
cost of pickling DataFrames with Arrow strings) one way, and each user's scores, weights and
counts the other. The child ignores SIGINT, SIGTERM and SIGHUP (the worker decides when it
stops and what it loads) and exits when the worker closes the pipe or dies.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading

import pandas as pd

log = logging.getLogger("metaselector.serve")
WATCH_SECONDS = 1.0


class ScoringUnavailable(Exception):
    """The scoring process stopped, or a new one could not start; the batch was not scored."""


def columns(rows: list[dict], user: str) -> dict[str, list]:
    """Event dicts as columns, with the user's id: what a request sends to be scored."""
    names = dict.fromkeys(name for row in rows for name in row)
    return {**{name: [row.get(name) for row in rows] for name in names}, "user": [user] * len(rows)}


def model_columns(models: list, user: str) -> dict[str, list]:
    """Request models of one kind (candidates: every field is required) as columns, with the user's id."""
    fields = type(models[0]).model_fields
    return {**{name: [getattr(m, name) for m in models] for name in fields}, "user": [user] * len(models)}


def frames(requests: list[tuple[dict | None, dict]]) -> list[tuple[pd.DataFrame | None, pd.DataFrame]]:
    return [(None if history is None else pd.DataFrame(history), pd.DataFrame(candidates))
            for history, candidates in requests]


def model_name(model) -> str:
    """The saved model's short id (its weights' checksum) that answers name."""
    manifest = getattr(model, "manifest_", None)
    return manifest["files"]["weights.safetensors"][:12] if manifest else "in-memory"


def load_on_one_thread(path, classes: dict):
    """Load a saved model on the calling thread with one torch thread.

    Only the scoring thread may run torch with several intra-op threads. OpenMP keeps a team of
    threads per calling thread; once a second thread (the event loop's, a loader's) has run a
    parallel region, there are more OpenMP threads than cores, and OpenMP then stops spinning
    and puts its threads to sleep between regions: the scorer's many small ops ran at about one
    core's speed on 2 (measured: 57 against 80 users/s for the same batches)."""
    import torch

    from ..estimator import MetaSelector

    torch.set_num_threads(1)
    return MetaSelector.load(path, model_classes=classes)


class InThreadScorer:
    """Scores on the batching thread, with the model object the worker holds."""

    kind = "thread"
    restarts = 0  # nothing to restart: the batching thread itself scores

    def __init__(self, model, threads: int) -> None:
        self.model, self.threads = model, threads

    def on_start(self) -> None:
        """Run first on the batching thread: only it runs torch with several threads (see
        load_on_one_thread)."""
        import torch

        torch.set_num_threads(self.threads)
        self.threads = torch.get_num_threads()

    def score(self, requests: list) -> tuple[list, dict, str]:
        model, stages = self.model, {}  # read once: a batch is scored by one model
        return model.score_users(frames(requests), timings=stages), stages, model_name(model)

    def read(self, path: str, classes: dict):
        """The model at `path`, whole (this scorer scores with it)."""
        return load_on_one_thread(path, classes)

    def use(self, path: str, model) -> None:
        self.model = model

    @property
    def alive(self) -> bool:
        return True

    @property
    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        pass


class ScoringProcess:
    """The child process that holds the model and scores batches (see the module docstring).
    One batch at a time: `score` and `use` are serialised by a lock. A child that dies is
    replaced within a second (a watchdog thread), or at the next batch, whichever comes first;
    the batch it was scoring fails with ScoringUnavailable (503)."""

    kind = "process"

    def __init__(self, path: str, classes: list[str], threads: int) -> None:
        self.path, self.classes, self.threads = str(path), list(classes), threads
        self._lock = threading.Lock()
        self._process = None
        self._conn = None
        self.restarts = -1
        self._closing = threading.Event()
        self._start()
        threading.Thread(target=self._watch, name="metaselector-scoring-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self._closing.wait(WATCH_SECONDS):
            if self.alive:
                continue
            with self._lock:
                if self._closing.is_set() or self.alive:
                    continue
                try:
                    self._start()
                    log.warning("the scoring process had stopped; started another (pid %s)", self.pid)
                except Exception as err:  # tried again at the next look or batch
                    log.warning("the scoring process had stopped and could not be restarted: %s", err)

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no lock or thread pool inherited
        parent, child = context.Pipe()
        process = context.Process(target=_child_main, args=(child, self.path, self.classes, self.threads),
                                  name="metaselector-scoring", daemon=True)
        process.start()
        child.close()
        try:
            kind, payload = parent.recv()
        except (EOFError, OSError):
            process.join(timeout=5)
            raise ScoringUnavailable(f"the scoring process exited at start (status {process.exitcode})") from None
        if kind != "ready":
            process.join(timeout=5)
            raise payload
        self._process, self._conn, self.threads = process, parent, payload
        self.restarts += 1

    def _call(self, kind: str, payload):
        with self._lock:
            if self._process is None or not self._process.is_alive():
                self._start()
            try:
                self._conn.send((kind, payload))
                status, answer = self._conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                self._process.join(timeout=5)
                raise ScoringUnavailable(f"the scoring process stopped (status {self._process.exitcode})") from None
        if status == "error":
            raise answer
        return answer

    def score(self, requests: list) -> tuple[list, dict, str]:
        return self._call("score", requests)

    def read(self, path: str, classes: dict):
        """What the HTTP side needs of the model at `path` (its weights are the child's)."""
        from ..saved_model import load_view

        return load_view(path)

    def use(self, path: str, model) -> None:
        """Load the model at `path` in the child (between two batches); later restarts load it too."""
        self._call("load", (str(path), self.classes))
        self.path = str(path)

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def close(self, seconds: float = 10.0) -> None:
        self._closing.set()
        with self._lock:
            if self._process is None:
                return
            try:
                self._conn.send(("stop", None))
            except OSError:
                pass
            self._conn.close()
            self._process.join(timeout=seconds)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()


def _portable(err: BaseException) -> BaseException:
    """`err` if it survives pickling (the project's errors do), else a RuntimeError saying it."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{err.__class__.__name__}: {err}")


def _load(path: str, classes: list[str]):
    from ..estimator import MetaSelector
    from ..models import resolve_model

    resolved = {name: resolve_model(name, where="--model-class") for name in classes}
    return MetaSelector.load(path, model_classes=resolved)


def _child_main(conn, path: str, classes: list[str], threads: int) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    import torch

    from . import limit_malloc_arenas

    limit_malloc_arenas()
    torch.set_num_threads(threads)
    try:
        model = _load(path, classes)
    except Exception as err:
        conn.send(("error", _portable(err)))
        return
    conn.send(("ready", torch.get_num_threads()))
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):  # the worker has gone
            return
        if kind == "stop":
            return
        try:
            if kind == "score":
                stages: dict[str, float] = {}
                answer = (model.score_users(frames(payload), timings=stages), stages, model_name(model))
            else:  # "load": a new model, used from the next batch on
                model = _load(*payload)
                answer = model_name(model)
        except Exception as err:  # reported to the waiting requests, as in the thread
            conn.send(("error", _portable(err)))
            continue
        try:
            conn.send(("ok", answer))
        except (EOFError, OSError):
            return
