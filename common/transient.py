"""Riding out transient database and broker errors in long-running worker code.

A training job runs for hours; a database failover, a restarted PgBouncer or a Redis blip must
not fail it. `retry` re-runs a unit of work (a whole transaction, never a statement inside
one) after such an error, with backoff, reconnecting each time. `Renewer` is a thread that
keeps a lease or heartbeat alive through the same errors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from django.conf import settings
from django.db import InterfaceError, InternalError, OperationalError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _transient_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [OperationalError, InterfaceError]
    try:
        from kombu.exceptions import OperationalError as BrokerError

        types.append(BrokerError)
    except ImportError:  # pragma: no cover - kombu comes with celery
        pass
    try:
        import redis

        types.append(redis.ConnectionError)
        types.append(redis.TimeoutError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


TRANSIENT = _transient_types()


# PostgreSQL's SQLSTATE for a session it ended for idling in a transaction past
# idle_in_transaction_session_timeout.
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"


def is_transient(exc: BaseException) -> bool:
    """A dropped connection or an unreachable database or broker: reconnect and try again.

    Besides the connection errors proper, a session PostgreSQL ended for idling in a transaction
    (a worker frozen mid-write: SIGSTOP, a paused VM, a long GC pause) is one. psycopg calls it
    an InternalError (class 25, transaction state), but the connection is gone, not wrong."""
    if isinstance(exc, TRANSIENT):
        return True
    return isinstance(exc, InternalError) and (
        getattr(exc.__cause__, "sqlstate", None) == IDLE_IN_TRANSACTION_TIMEOUT
    )


def reconnect() -> None:
    """Drop this thread's database connection; Django opens a new one on the next query."""
    try:
        connection.close()
    except Exception:  # the connection is already broken: closing it may fail too
        logger.debug("closing a broken connection failed", exc_info=True)


def backoff(attempt: int, *, first: float = 0.5, cap: float = 15.0) -> float:
    return float(min(cap, first * 2**attempt))


def retry(fn: Callable[[], T], *, what: str, budget: float | None = None) -> T:
    """Run `fn`, re-running it after transient errors for up to `budget` seconds from the first
    one (TUNERY_DB_RETRY_SECONDS); then the last error propagates. Other errors propagate at once.

    `fn` must be safe to run again: a transaction that rolled back, a guarded UPDATE.
    """
    budget = settings.TUNERY_DB_RETRY_SECONDS if budget is None else budget
    deadline: float | None = None
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if connection.in_atomic_block:
                raise  # the enclosing transaction is lost: retry it as a whole, not this part
            # The budget runs from the first failure, not from the call: a process frozen in
            # the middle of `fn` (SIGSTOP, a paused VM) wakes to a dead connection and still
            # gets its retries, which tell it whether it lost its job meanwhile.
            if deadline is None:
                deadline = time.monotonic() + budget
            delay = backoff(attempt)
            if time.monotonic() + delay > deadline:
                logger.error("%s: giving up after %d tries: %s", what, attempt + 1, exc)
                raise
            logger.warning("%s: transient error (%s); retrying in %.1f s", what, exc, delay)
            reconnect()
            time.sleep(delay)
            attempt += 1


class Renewer(threading.Thread):
    """Calls `renew()` every `interval` seconds until stopped or until `renew()` returns False
    (the lease or job is no longer ours). Transient errors are logged and retried with backoff:
    the thread never dies of them."""

    def __init__(self, renew: Callable[[], bool], interval: float, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.renew = renew
        self.interval = interval
        self.stopped = threading.Event()
        self.lost = threading.Event()  # renew() said the lease is someone else's now
        self.failures = 0

    def run(self) -> None:
        delay = self.interval
        try:
            while not self.stopped.wait(delay):
                try:
                    owned = self.renew()
                except Exception as exc:
                    self.failures += 1
                    if is_transient(exc):
                        delay = min(self.interval, backoff(self.failures - 1))
                        logger.warning("%s: transient error (%s); retrying", self.name, exc)
                        reconnect()
                    else:
                        logger.exception("%s: renew failed; retrying", self.name)
                        delay = self.interval
                    continue
                if self.failures:
                    logger.info("%s: recovered after %d failures", self.name, self.failures)
                self.failures, delay = 0, self.interval
                if not owned:
                    self.lost.set()
                    return
        finally:
            reconnect()  # this thread's own connection

    def stop(self) -> None:
        self.stopped.set()

    def __enter__(self) -> Renewer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
