"""`metaselector serve`: per-user adaptation and scoring over HTTP, with a durable history store."""

import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc's malloc arenas. The request loop, the scoring worker and the thread pool each
    get an arena by default, and tensors of varying sizes freed across them fragment memory: a
    2-minute soak at 32 concurrent clients grew the server's RSS by 10% with the default and by
    0.5% with two arenas (benchmarks/serve_load.py). A no-op where libc is not glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, count)
    except (OSError, AttributeError):
        pass
