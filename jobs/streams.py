"""Server-sent events for `GET /v1/fine-tunes/{id}/events?stream=true` (reference §3.4).

Replays every event from the start (that is how `fine_tunes.follow` resumes), sends a
keep-alive comment while the job is quiet (0.28's read timeout is 600 s), then `data: [DONE]`
and ends the response: the 0.28 client reads until the body ends, so we must not hold it open.

The body is an async generator run by the ASGI server's event loop (config.asgi): while the
job is quiet a stream is one asyncio.Event waiting on jobs.notify's per-process listener; it
holds no thread and no database connection, and reads the database only when the job has news
(or on its keep-alive tick, in case a notification was lost).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

from common.dbcontext import own_connections, release_connections
from jobs import notify
from jobs.models import FineTuneJob, JobEvent
from jobs.serializers import legacy_event_json

KEEPALIVE_SECONDS = 15.0


@own_connections  # given back (to the pool, or closed) at once: a stream must not hold one
def _read_sync(job_pk: int, last_id: int) -> tuple[str | None, list[dict[str, Any]], int]:
    """The job's status and its message events after `last_id`."""
    status = FineTuneJob.objects.filter(pk=job_pk).values_list("status", flat=True).first()
    new = list(JobEvent.objects.filter(job_id=job_pk, id__gt=last_id, type=JobEvent.Type.MESSAGE))
    return status, [legacy_event_json(e) for e in new], (new[-1].id if new else last_id)


# Not thread-sensitive: a short read in the loop's shared executor, not a thread per stream.
_read = sync_to_async(_read_sync, thread_sensitive=False)


async def _events(job_pk: int, keepalive_seconds: float) -> AsyncIterator[str]:
    hub = notify.hub()
    news = hub.subscribe(job_pk)  # before the first read: no event can slip between the two
    last_id = 0
    try:
        while True:
            news.clear()
            status, new, last_id = await _read(job_pk, last_id)
            for event in new:
                yield f"data: {json.dumps(event)}\n\n"
            # Events are written before (or with) the status flip, so a finished status read
            # *before* the event query above means every event has been sent.
            if status is None or status in FineTuneJob.FINISHED:
                yield "data: [DONE]\n\n"
                return
            try:
                await asyncio.wait_for(news.wait(), keepalive_seconds)
            except TimeoutError:
                yield ": keep-alive\n\n"
    finally:
        hub.unsubscribe(job_pk, news)


def legacy_event_stream(
    job_pk: int, *, keepalive_seconds: float = KEEPALIVE_SECONDS
) -> StreamingHttpResponse:
    # The view's lookups are done: give its connection back before the long wait begins.
    release_connections()
    response = StreamingHttpResponse(
        _events(job_pk, keepalive_seconds), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: don't buffer the stream
    # config.asgi: park no thread for this response while it streams.
    response.detached = True  # type: ignore[attr-defined]  # our own marker attribute
    return response
