"""Database connections for code that runs on the ASGI event loop's side (jobs.streams).

Django keeps connections in a context-local store, and asgiref copies that store into each
`sync_to_async` call: a short read from the loop's shared executor would otherwise pick up (and
trip over) the connection a request's own thread opened. These helpers give such a read its own
connections and hand them back (to the pool, or closed) as soon as it is done, so that an idle
stream holds none.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")


def release_connections() -> None:
    """Give back this context's connections, except one inside a transaction (a test's)."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def own_connections(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn` with connections of its own, released when it returns."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        def inner() -> R:
            try:
                return fn(*args, **kwargs)
            finally:
                connections.close_all()

        return contextvars.Context().run(inner)

    return run
