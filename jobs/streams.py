"""Server-sent events for `GET /v1/fine-tunes/{id}/events?stream=true` (reference §3.4).

Replays every event from the start (that is how `fine_tunes.follow` resumes), sends a
keep-alive comment while the job is quiet (0.28's read timeout is 600 s), then `data: [DONE]`
and ends the response: the 0.28 client reads until the body ends, so we must not hold it open.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from django.db import close_old_connections
from django.http import StreamingHttpResponse

from jobs.models import FineTuneJob, JobEvent
from jobs.serializers import legacy_event_json

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0


def _events(job_pk: int, poll_seconds: float, keepalive_seconds: float) -> Iterator[str]:
    last_id = 0
    quiet_since = time.monotonic()
    try:
        while True:
            status = FineTuneJob.objects.filter(pk=job_pk).values_list("status", flat=True).first()
            new = list(
                JobEvent.objects.filter(job_id=job_pk, id__gt=last_id, type=JobEvent.Type.MESSAGE)
            )
            for event in new:
                last_id = event.id
                yield f"data: {json.dumps(legacy_event_json(event))}\n\n"
            if new:
                quiet_since = time.monotonic()
            # Events are written before the status flips, so a finished status read *before*
            # the event query above means every event has been sent.
            if status is None or status in FineTuneJob.FINISHED:
                yield "data: [DONE]\n\n"
                return
            if time.monotonic() - quiet_since >= keepalive_seconds:
                quiet_since = time.monotonic()
                yield ": keep-alive\n\n"
            time.sleep(poll_seconds)
    finally:
        # Long-lived generator on a server thread: don't leak its DB connection.
        close_old_connections()


def legacy_event_stream(
    job_pk: int, *, poll_seconds: float = POLL_SECONDS, keepalive_seconds: float = KEEPALIVE_SECONDS
) -> StreamingHttpResponse:
    response = StreamingHttpResponse(
        _events(job_pk, poll_seconds, keepalive_seconds), content_type="text/event-stream"
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: don't buffer the stream
    return response
