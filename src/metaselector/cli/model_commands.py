"""`score` and `serve`: using a saved model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from .. import distributed
from ..serving.settings import ServeSettings
from .group import cli, join_ranks

# serve's limits default to ServeSettings' own, declared once there
SERVE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServeSettings)}


@cli.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="A saved model folder.")
@click.option("--history", "history_file", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet: user,item,rating,timestamp (or label instead of rating).")
@click.option("--candidates", "candidates_file", type=click.Path(path_type=Path), required=True,
              help="CSV or Parquet: user,item,timestamp.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="CSV or Parquet (by suffix); default: CSV on standard output.")
@click.option("--model-class", "model_class", multiple=True, metavar="MODULE:CLASS|FILE.py:CLASS",
              help="Your own base model, as named when training (a saved model never imports one itself).")
def score(model_dir: Path, history_file: Path, candidates_file: Path, out: Path | None,
          model_class: tuple[str, ...]) -> None:
    """Adapt to each user's history and score their candidates."""
    from ..estimator import MetaSelector
    from ..models import resolve_model
    from ..scoring import read_events, score_frame, write_table

    classes = {name: resolve_model(name, where="--model-class") for name in model_class}
    model = MetaSelector.load(model_dir, model_classes=classes)
    join_ranks(model.config_.device)
    scored = score_frame(model, read_events(history_file, needs_label=True), read_events(candidates_file))
    if not distributed.current().main:
        return
    if out is None:
        click.echo(scored.to_csv(index=False), nl=False)
    else:
        write_table(scored, out)
        click.echo(f"wrote {len(scored)} scored candidates to {out}", err=True)


@cli.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="A saved model folder.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--history-db", default="history.sqlite", show_default=True,
              help="Where users' recent events live: a SQLite file (created if missing; one server), or a "
                   "postgresql://USER@HOST/DB URL shared by several servers.")
@click.option("--history-length", type=click.IntRange(min=1), default=None,
              help="Events kept per user and used to adapt (default: the model's serve_history_length, 200).")
@click.option("--max-batch", type=click.IntRange(min=1), default=SERVE_DEFAULTS["max_batch"], show_default=True,
              help="Users adapted together in one call (1: no batching).")
@click.option("--queue-size", type=click.IntRange(min=1), default=SERVE_DEFAULTS["queue_size"], show_default=True,
              help="Requests that may wait; beyond, 503 with Retry-After.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=SERVE_DEFAULTS["max_candidates"],
              show_default=True)
@click.option("--max-events", type=click.IntRange(min=1), default=SERVE_DEFAULTS["max_events"],
              show_default=True)
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=SERVE_DEFAULTS["max_body_bytes"],
              show_default=True)
@click.option("--max-future-seconds", type=click.IntRange(min=0), default=SERVE_DEFAULTS["max_future_seconds"],
              show_default=True, help="How far ahead of the server's clock a stored event may be dated.")
@click.option("--max-connections", type=click.IntRange(min=1), default=SERVE_DEFAULTS["max_connections"],
              show_default=True, help="Open connections; beyond, 503.")
@click.option("--body-read-seconds", type=click.FloatRange(min=0, min_open=True),
              default=SERVE_DEFAULTS["body_read_seconds"], show_default=True,
              help="Time to receive a request body; beyond, 408.")
@click.option("--history-retention-days", "retention_days", type=click.FloatRange(min=0),
              default=SERVE_DEFAULTS["retention_days"], show_default=True,
              help="Stored events older than this are dropped (0: kept until a cap drops them).")
@click.option("--api-keys", "api_keys", type=click.Path(path_type=Path), default=None,
              help="File of API keys and their scopes (score, events, history, admin), one per line.")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without --api-keys.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes, each with its own HTTP side, batcher and scoring process "
                   "(for throughput: about one per core, with --threads 1).")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="torch threads of each worker's scorer (0: torch's default, the machine's cores).")
@click.option("--model-class", "model_class", multiple=True, metavar="MODULE:CLASS|FILE.py:CLASS",
              help="Your own base model, as named when training.")
@click.option("--scoring-in-thread", is_flag=True,
              help="Score on the worker's batching thread rather than in a scoring process of its own (one "
                   "process per worker, and one interpreter lock shared with HTTP).")
def serve(model_dir, host, port, history_db, history_length, max_batch, queue_size, max_candidates, max_events,
          max_body_bytes, max_future_seconds, max_connections, body_read_seconds, retention_days, api_keys, insecure,
          workers, threads, model_class, scoring_in_thread) -> None:
    """Serve the model over HTTP: adapt to a user's recent history, score candidates (docs at /docs)."""
    from ..errors import ConfigError
    from ..serving.auth import KeyRing

    if api_keys is not None:
        KeyRing.read(api_keys)  # a bad keys file is refused here, in one line
    elif not insecure and not _loopback(host):
        raise ConfigError(f"--host {host}: serving beyond this machine needs --api-keys (users' histories are "
                          "personal data), or --insecure to allow it without keys")
    options = {"model": str(model_dir), "history_db": str(history_db), "threads": threads,
               "model_classes": list(model_class), "api_keys": str(api_keys) if api_keys else None,
               "scoring_in_thread": scoring_in_thread,
               "settings": dict(max_batch=max_batch, queue_size=queue_size, max_candidates=max_candidates,
                                max_events=max_events, max_body_bytes=max_body_bytes, history_length=history_length,
                                max_future_seconds=max_future_seconds, max_connections=max_connections,
                                body_read_seconds=body_read_seconds, retention_days=retention_days)}
    app = _checked_app(options)  # the model, the store and the keys, checked before any worker starts
    if workers > 1:  # each worker builds its own
        app.state.service.close()
        app = None
    click.echo(f"serving {model_dir} on http://{host}:{port} with {workers} worker(s) (docs at /docs)", err=True)
    _run(app, options, host, port, workers)


def _checked_app(options: dict):
    from ..errors import InputError
    from ..serving.store import StoreUnavailable
    from ..serving.worker import build_app

    try:
        return build_app(options)
    except StoreUnavailable as err:
        raise InputError(f"--history-db: cannot open the history store ({err})") from None


def _run(app, options: dict, host: str, port: int, workers: int) -> None:
    """uvicorn with the app (one worker), or N worker processes that each build it and listen on
    the port with a socket of their own (serving/supervisor.py; the Prometheus client then adds
    up the workers' metrics from files in a shared folder)."""
    import os
    import tempfile

    import uvicorn

    from ..serving.supervisor import run_workers

    # Connection limits: uvicorn answers 503 past max_connections, closes idle keep-alive
    # connections, and caps an incomplete request head (h11) at 16 KiB; the app caps the body's
    # size and the time to receive it. TLS belongs to a proxy in front (see docs/serving.md).
    limits = dict(log_level="warning", timeout_graceful_shutdown=30,
                  limit_concurrency=options["settings"]["max_connections"],
                  timeout_keep_alive=SERVE_DEFAULTS["keep_alive_seconds"], h11_max_incomplete_event_size=16 * 1024)
    if app is not None:
        uvicorn.run(app, host=host, port=port, **limits)
        return
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="metaselector-metrics-"))
    run_workers(options, host, port, workers, limits)


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
