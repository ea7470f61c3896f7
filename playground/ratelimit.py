"""A per-API-key request rate limit: fixed one-minute windows, shared across processes.

Redis (INCR + EXPIRE) when Celery's broker is Redis, as in production where several web
processes must share one count; otherwise Django's cache, which in the embedded setup (one
web process) is process-local and enough.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

WINDOW_SECONDS = 60


@lru_cache(maxsize=4)
def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url)


def hit(bucket: str, *, now: float | None = None) -> int:
    """Count one request in `bucket`'s current window; returns the count so far."""
    now = time.time() if now is None else now
    key = f"tunery:ratelimit:{bucket}:{int(now // WINDOW_SECONDS)}"
    broker = settings.CELERY_BROKER_URL
    if broker.startswith(("redis://", "rediss://")):
        pipe = _redis(broker).pipeline()
        pipe.incr(key)
        pipe.expire(key, WINDOW_SECONDS + 1)
        return int(pipe.execute()[0])
    cache.add(key, 0, WINDOW_SECONDS + 1)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, WINDOW_SECONDS + 1)
        return 1


def current(bucket: str, *, now: float | None = None) -> int:
    """Requests counted in `bucket`'s current window so far, without counting one (the usage
    page shows it)."""
    now = time.time() if now is None else now
    key = f"tunery:ratelimit:{bucket}:{int(now // WINDOW_SECONDS)}"
    broker = settings.CELERY_BROKER_URL
    if broker.startswith(("redis://", "rediss://")):
        return int(_redis(broker).get(key) or 0)
    return int(cache.get(key) or 0)


def key_bucket(hashed_secret: str) -> str:
    # The hash, not the pk: ids are reused (test databases, restores), hashes never are.
    return f"key-{hashed_secret[:16]}"


def seconds_to_next_window(now: float | None = None) -> int:
    now = time.time() if now is None else now
    return max(1, math.ceil(WINDOW_SECONDS - now % WINDOW_SECONDS))


class ApiKeyRateThrottle(BaseThrottle):
    """TUNERY_RATE_LIMIT_PER_MINUTE requests per key (0: no limit). Beyond it DRF raises
    Throttled, which config.api turns into OpenAI's 429 with Retry-After."""

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        limit = settings.TUNERY_RATE_LIMIT_PER_MINUTE
        key = getattr(request, "auth", None)
        if not limit or key is None:
            return True
        now = time.time()
        if hit(key_bucket(key.hashed_secret), now=now) <= limit:
            return True
        self._wait = seconds_to_next_window(now)
        return False

    def wait(self) -> float | None:
        return self._wait
