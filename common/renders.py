"""A polled fragment rendered once per version, and those bytes served to all its pollers.

Why: every open job page polls its live partial every 2 s, and while a job trains the
partial changes on nearly every poll, so the 304 of common.conditional rarely applies.
Rendering it is most of such a poll's cost (about 20 ms of CPU and ten queries,
docs/benchmarks/serving.md), and 50 pollers of one job paid it 50 times for the same state.
With this, the first poller of a version renders it and the others get the same HTML from a
short-lived cache (per process: settings.CACHES["renders"]).

Why it is safe to share:
- The render never sees the request: no context processors run, so nothing of the viewer
  (user, organization, role, messages) can reach HTML another viewer is served. The one
  per-viewer part a fragment may need, the CSRF token of its forms, is rendered as a
  placeholder and each response gets the viewer's own token.
- The caller checks access first and keys on the object it found in the viewer's org, and on
  everything the fragment shows: the same version its ETag is made of. The render happens
  after the version was read, so a cached render is never older than its key; what the
  version leaves out can be up to TTL_SECONDS old.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.template.loader import render_to_string
from django.utils.crypto import salted_hmac

CACHE = "renders"
# Bounds how old a render's relative times ("12 s ago", the ETA) can be: the heartbeat's own
# resolution (TUNERY_HEARTBEAT_SECONDS).
TTL_SECONDS = 5


def _csrf_placeholder() -> str:
    # Derived from the secret key: the same in every process (were the cache shared), and no
    # text a user wrote can contain it (its replacement would put the viewer's token there).
    return salted_hmac("common.renders.csrf", "placeholder").hexdigest()


def render_shared(
    request: HttpRequest,
    template_name: str,
    *,
    key: tuple[Any, ...],
    context: Callable[[], dict[str, Any]],
) -> HttpResponse:
    """`template_name` rendered with `context()` (called only when this version is not cached
    yet), for `request`'s viewer. `key` must identify everything the HTML shows."""
    cache = caches[CACHE]
    cache_key = (
        "render:" + hashlib.blake2b(repr((template_name, key)).encode(), digest_size=16).hexdigest()
    )
    placeholder = _csrf_placeholder()
    html: str | None = cache.get(cache_key)
    if html is None:
        html = str(render_to_string(template_name, {**context(), "csrf_token": placeholder}))
        cache.set(cache_key, html, TTL_SECONDS)
    return HttpResponse(html.replace(placeholder, get_token(request)))
