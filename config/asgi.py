"""The web tier's entry point: Django under ASGI, served by uvicorn (config/supervisord.conf).

Django's ASGIHandler, adjusted in two ways for responses that stream:

- A sync iterator (a completion's SSE relayed from the inference service, a CSV export, a file
  download) is pulled one part at a time in the request's own thread, not collected whole into
  a list before the first byte is sent (Django's default under ASGI), which would turn a token
  stream into one late response and load a whole file into memory.
- A response marked `detached` (jobs.streams: the job-event SSE) gives its request's thread back
  before it streams. Django parks one thread per request until the response ends (asgiref's
  ThreadSensitiveContext); a job's stream can last hours and run entirely on the event loop, so
  it must not keep one. Anything sync that runs after (the response's close) gets a fresh one.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler
from django.http import FileResponse, HttpResponseBase
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

_END = object()
FILE_PARTS_PER_HOP = 64  # FileResponse reads 4 KiB blocks: 256 KiB per thread hop


def _take(iterator: Iterator[Any], count: int) -> list[Any]:
    parts = []
    for part in iterator:
        parts.append(part)
        if len(parts) >= count:
            break
    return parts


async def pull(iterator: Iterator[Any], per_hop: int = 1) -> AsyncIterator[Any]:
    """A sync iterator's parts as they come, each hop in the request's own thread (the one its
    view ran in: its database connection and thread-locals are there)."""
    take = sync_to_async(_take)
    while True:
        parts = await take(iterator, per_hop)
        for part in parts:
            yield part
        if len(parts) < per_hop:
            return


def release_request_thread() -> None:
    context = SyncToAsync.thread_sensitive_context.get(None)
    if context is None:
        return
    executor = SyncToAsync.context_to_thread_executor.pop(context, None)
    if executor is not None:
        executor.shutdown(wait=False)


class TuneryASGIHandler(ASGIHandler):
    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        if response.streaming and not response.is_async:  # type: ignore[attr-defined]  # streaming responses have it
            per_hop = FILE_PARTS_PER_HOP if isinstance(response, FileResponse) else 1
            # Django's own switch for an async body (StreamingHttpResponse.streaming_content).
            response._iterator = pull(response._iterator, per_hop)  # type: ignore[attr-defined]  # private
            response.is_async = True  # type: ignore[attr-defined]  # see above
        if getattr(response, "detached", False):
            release_request_thread()
        await super().send_response(response, send)


get_asgi_application()  # django.setup(), as Django's own entry point does
# Import every view now (Django would on the first request): a (re)started web process is slow
# to boot, not slow to answer its first request.
get_resolver().url_patterns  # noqa: B018 -- imported for its side effect
application = TuneryASGIHandler()
