""" "A job has news": how a written event reaches the streams that follow the job.

Writers (workers, the reaper, web views) call nothing: a `post_save` receiver on JobEvent
(jobs.apps) publishes the job's id once the event's transaction commits. Status flips that end a
stream are written with (or after) their terminal event, so one notification covers both.

Readers are the async SSE streams of the web tier (jobs.streams). Each web process keeps one
`Hub` per event loop: a single listener task for the whole process, whatever the number of
streams, and an asyncio.Event per stream. A stream sleeps on its Event (no thread, no database
connection) and reads the database only when woken.

- Redis broker (production, `make run` with CELERY_BROKER_URL=redis://...): Redis pub/sub on
  one channel; one subscriber connection per web process.
- Otherwise (SQLite, the filesystem broker of a laptop): one query per `POLL_SECONDS` per web
  process for the newest event id of every followed job, waking only the streams whose job moved
  on. Efficient polling: its cost does not grow with the number of streams on one job.

A lost notification (Redis restarting) costs latency, never correctness: streams re-read the
database on their keep-alive tick anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import Max

from common.dbcontext import own_connections
from jobs.models import JobEvent

logger = logging.getLogger(__name__)

CHANNEL = "tunery:job-events"
POLL_SECONDS = 1.0


def redis_url() -> str | None:
    url = settings.CELERY_BROKER_URL
    return url if url.startswith(("redis://", "rediss://")) else None


_publisher: Any = None


def _publish_now(job_id: int) -> None:
    global _publisher
    url = redis_url()
    if url is None:
        return  # the pollers find the event in the database
    try:
        if _publisher is None:
            import redis

            _publisher = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        _publisher.publish(CHANNEL, str(job_id))
    except Exception:
        # A worker's training step must never fail because Redis blinked; streams catch up on
        # their next keep-alive tick.
        logger.warning("could not publish job %s's new event", job_id, exc_info=True)


def on_event_saved(sender: type[JobEvent], instance: JobEvent, created: bool, **_: Any) -> None:
    """post_save receiver (jobs.apps): every message event, whoever writes it, wakes its
    streams. Metrics events (one per training step) don't: no stream shows them, and waking
    hundreds of streams 50 times a second for nothing would cost a read each (the charts and
    the events list are polled, with ETags)."""
    if created and instance.type == JobEvent.Type.MESSAGE:
        publish(instance.job_id)


def publish(job_id: int) -> None:
    """Tell every web process that `job_id` has a new event, once the transaction commits."""
    transaction.on_commit(lambda: _publish_now(job_id))


class Hub:
    """One web process's (one event loop's) listener, fanning notifications out to streams."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, job_id: int) -> asyncio.Event:
        """An Event set whenever `job_id` may have news; clear it before each read."""
        if self._task is None or self._task.done():
            listen = self._listen_redis if redis_url() else self._poll
            self._task = self.loop.create_task(listen())
        event = asyncio.Event()
        self.waiters[job_id].add(event)
        return event

    def unsubscribe(self, job_id: int, event: asyncio.Event) -> None:
        events = self.waiters.get(job_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self.waiters[job_id]

    def wake(self, job_id: int) -> None:
        for event in self.waiters.get(job_id, ()):
            event.set()

    def wake_all(self) -> None:
        for job_id in list(self.waiters):
            self.wake(job_id)

    async def _listen_redis(self) -> None:
        import redis.asyncio as aredis

        while True:
            client = aredis.Redis.from_url(redis_url() or "")
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    # Anything written while we were (re)connecting: let every stream re-read.
                    self.wake_all()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            try:
                                self.wake(int(message["data"]))
                            except ValueError:
                                continue
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("job-event subscriber lost Redis; retrying", exc_info=True)
                await asyncio.sleep(1.0)
            finally:
                await client.aclose()

    async def _poll(self) -> None:
        newest: dict[int, int | None] = {}
        while True:
            await asyncio.sleep(POLL_SECONDS)
            ids = list(self.waiters)
            if not ids:
                continue
            try:
                now = await _newest_events(ids)
            except Exception:
                logger.warning("job-event poll failed", exc_info=True)
                continue
            for job_id in ids:
                if job_id not in newest or now.get(job_id) != newest[job_id]:
                    self.wake(job_id)
            newest = {job_id: now.get(job_id) for job_id in ids}


@own_connections
def _newest_events_sync(ids: list[int]) -> dict[int, int | None]:
    rows = JobEvent.objects.filter(job_id__in=ids).values("job_id").annotate(last=Max("id"))
    return {row["job_id"]: row["last"] for row in rows}


_newest_events = sync_to_async(_newest_events_sync, thread_sensitive=False)

_hubs: dict[int, Hub] = {}


def hub() -> Hub:
    """The running event loop's Hub (uvicorn runs one loop per worker process)."""
    loop = asyncio.get_running_loop()
    found = _hubs.get(id(loop))
    if found is None or found.loop is not loop:  # an id reused by a later loop (tests)
        found = _hubs[id(loop)] = Hub(loop)
    return found
