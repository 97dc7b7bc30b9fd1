"""`serve --workers N`: N worker processes, each listening on the one port with its own socket.

Each worker loads the model, opens the history store and builds the app itself (worker.py), so
it has its own batcher and torch threads, and binds host:port with SO_REUSEPORT: the kernel
then spreads new connections evenly over the workers' sockets. With one shared listening socket
(uvicorn's own `--workers`), whichever worker woke first accepted a whole burst of connections:
32 keep-alive clients all landed on one worker and the second served nothing.

The parent holds a bound socket that never listens, so the port stays reserved for this server
(a listening socket in the parent would be handed connections nobody accepts). It starts the
workers, restarts one that dies (and gives up if they keep dying at once), passes SIGHUP on
(every worker re-reads the model folder), and on SIGTERM or SIGINT stops them gracefully.
Only processes of the same user can join a SO_REUSEPORT port (Linux), so another account
cannot take connections from the server.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time

from ..errors import ConfigError

log = logging.getLogger("metaselector.serve")
GRACE_SECONDS = 35.0  # a worker's graceful shutdown (30 s) and a margin
QUICK_DEATH_SECONDS = 10.0  # a worker that dies this soon after starting counts as failing to start
MAX_QUICK_DEATHS = 3


def reuseport_socket(host: str, port: int, listen: bool = True) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _worker(options: dict, host: str, port: int, limits: dict) -> None:
    """One worker process: the app, a socket of its own on the shared port, uvicorn."""
    import uvicorn

    from .worker import build_app

    app = build_app(options)
    sock = reuseport_socket(host, port)
    uvicorn.Server(uvicorn.Config(app, **limits)).run(sockets=[sock])


def run_workers(options: dict, host: str, port: int, workers: int, limits: dict) -> None:
    """Serve with `workers` processes until SIGTERM or SIGINT (see the module docstring)."""
    try:
        reserved = reuseport_socket(host, port, listen=False)
    except OSError as err:
        raise ConfigError(f"--port {port}: cannot bind {host}:{port} ({err.strerror})") from None
    port = reserved.getsockname()[1]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool forked
    processes: dict[int, tuple[multiprocessing.Process, float]] = {}
    quick_deaths = 0
    stopping = False

    def start(slot: int) -> None:
        process = context.Process(target=_worker, args=(options, host, port, limits),
                                  name=f"metaselector-worker-{slot}")
        process.start()
        processes[slot] = (process, time.monotonic())

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    def hangup(signum, frame) -> None:
        for process, _ in processes.values():
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hangup)
    for slot in range(workers):
        start(slot)
    try:
        while not stopping:
            time.sleep(0.2)
            for slot, (process, started) in list(processes.items()):
                if process.is_alive() or stopping:
                    continue
                _forget(process.pid)
                quick_deaths = quick_deaths + 1 if time.monotonic() - started < QUICK_DEATH_SECONDS else 0
                if quick_deaths >= MAX_QUICK_DEATHS:
                    raise ConfigError(f"serve: workers keep exiting at start (last exit status {process.exitcode}); "
                                      "see the messages above")
                log.warning("worker %d (pid %s) exited with status %s; starting another", slot, process.pid,
                            process.exitcode)
                start(slot)
    finally:
        _stop_all([process for process, _ in processes.values()])
        reserved.close()


def _stop_all(processes: list) -> None:
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()
        _forget(process.pid)


def _forget(pid: int | None) -> None:
    """Drop a dead worker's live gauges (queue length) from the multiprocess metrics."""
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
