"""One serving process's app, built from `serve`'s options: `serve --workers N` starts N
processes (supervisor.py), each building its own, so every worker loads the model and opens the
history store itself and has its own batcher and scoring process (scoring_process.py) with
--threads torch threads. The parent checked the options before starting them, so a worker only
fails for reasons that arise after that check.
"""

from __future__ import annotations


def build_app(options: dict):
    """The app for `options` (model, history_db, settings, api_keys, threads, model_classes)."""
    import torch

    from ..models import resolve_model
    from ..saved_model import load_view
    from . import limit_malloc_arenas
    from .app import create_app
    from .auth import KeyRing
    from .scoring_process import ScoringProcess, load_on_one_thread
    from .settings import ServeSettings
    from .store import open_store

    limit_malloc_arenas()
    scoring_threads = options["threads"] or torch.get_num_threads()
    torch.set_num_threads(1)  # this thread's: it runs the event loop (load_on_one_thread says why)
    classes = {name: resolve_model(name, where="--model-class") for name in options["model_classes"]}
    in_thread = bool(options.get("scoring_in_thread"))
    # in a scoring process the child loads the weights; this side reads the manifest and the encoder
    model = load_on_one_thread(options["model"], classes) if in_thread else load_view(options["model"])
    settings = ServeSettings(**{**options["settings"], "history_length": options["settings"]["history_length"]
                                or model.config_.serve_history_length})
    store = open_store(options["history_db"], settings.history_length, settings.max_user_bytes,
                       settings.retention_days * 86_400 or None)
    keys = KeyRing.read(options["api_keys"]) if options["api_keys"] else None
    scorer = None if in_thread else ScoringProcess(options["model"], options["model_classes"], scoring_threads)
    return create_app(model, store, settings, keys=keys, model_path=options["model"], classes=classes,
                      scoring_threads=scoring_threads, scorer=scorer)
