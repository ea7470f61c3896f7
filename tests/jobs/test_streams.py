"""The legacy event stream (`fine_tunes.follow`): async, woken by jobs.notify, not by polling.

Transactional: the stream reads with connections of its own (it holds none while it waits), so
it must see committed rows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from jobs import events, notify, services
from jobs.models import FineTuneJob, JobEvent
from tests.conftest import Persona
from tests.factories import FileFactory

T = TypeVar("T")

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


def _create(owner: Persona) -> FineTuneJob:
    training = FileFactory.create(organization=owner.org)
    return services.job_create(
        organization=owner.org,
        created_by=owner.user,
        req=services.JobRequest(
            api=FineTuneJob.Api.LEGACY, training_file=training.public_id, model="curie"
        ),
    )


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run in a thread of its own: a browser test before this one leaves Playwright's
    event loop running in the main thread, where asyncio.run refuses to start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def _follow(owner: Persona, job: FineTuneJob) -> Any:
    return await AsyncClient().get(
        f"/v1/fine-tunes/{job.public_id}/events?stream=true",
        headers={"authorization": f"Bearer {owner.key}"},
    )


async def _frames(response: Any, until: str, timeout: float = 10.0) -> list[str]:
    """SSE frames read until one contains `until`."""
    frames: list[str] = []
    buffer = ""

    async def read() -> None:
        nonlocal buffer
        async for chunk in response.streaming_content:
            buffer += chunk.decode()
            *done, buffer = buffer.split("\n\n")
            frames.extend(done)
            if any(until in f for f in done):
                return

    await asyncio.wait_for(read(), timeout)
    return frames


def test_a_finished_job_replays_every_event_then_done(owner: Persona) -> None:
    job = _create(owner)
    services.job_cancel(job=job)

    async def follow() -> list[str]:
        response = await _follow(owner, job)
        assert response["Content-Type"].startswith("text/event-stream"), response.content
        return await _frames(response, "[DONE]")

    frames = _run(follow())

    assert frames[-1] == "data: [DONE]"
    first = json.loads(frames[0].removeprefix("data: "))
    assert first["message"] == f"Created fine-tune: {job.public_id}"
    assert any("cancelled" in f.lower() for f in frames)


def test_new_events_reach_a_waiting_stream_by_notification(owner: Persona) -> None:
    """With the polling fallback off and the keep-alive an hour away, only the notification
    published when the event commits can wake the stream."""
    job = _create(owner)

    async def follow() -> list[str]:
        response = await _follow(owner, job)
        first = await _frames(response, "Created fine-tune")
        await asyncio.sleep(0.3)  # the stream is now waiting
        await sync_to_async(events.emit)(job, "started")
        later = await _frames(response, "started")
        await sync_to_async(services.job_cancel)(job=job)
        return first + later + await _frames(response, "[DONE]")

    with (
        mock.patch("jobs.streams.KEEPALIVE_SECONDS", 3600.0),
        mock.patch.object(notify, "POLL_SECONDS", 0.05 if notify.redis_url() is None else 3600.0),
    ):
        frames = _run(follow())

    messages = [json.loads(f.removeprefix("data: "))["message"] for f in frames[:-1]]
    assert "Fine-tune started" in messages
    assert frames[-1] == "data: [DONE]"


def test_without_redis_one_poll_per_process_wakes_the_stream(owner: Persona, settings: Any) -> None:
    """SQLite / the filesystem broker: no pub/sub, so the process's one poller (the newest event
    id of every followed job, once per POLL_SECONDS) wakes the streams whose job moved on."""
    settings.CELERY_BROKER_URL = "filesystem://"
    job = _create(owner)

    async def follow() -> list[str]:
        response = await _follow(owner, job)
        first = await _frames(response, "Created fine-tune")
        await sync_to_async(events.emit)(job, "started")  # publishes nothing: no Redis
        later = await _frames(response, "started")
        await sync_to_async(services.job_cancel)(job=job)
        return first + later + await _frames(response, "[DONE]")

    with (
        mock.patch("jobs.streams.KEEPALIVE_SECONDS", 3600.0),
        mock.patch.object(notify, "POLL_SECONDS", 0.05),
    ):
        assert notify.redis_url() is None
        frames = _run(follow())

    assert frames[-1] == "data: [DONE]"
    assert any("Fine-tune started" in f for f in frames)


def test_a_stream_holds_no_database_connection_while_it_waits(owner: Persona) -> None:
    job = _create(owner)
    opened: list[Any] = []

    async def follow() -> None:
        response = await _follow(owner, job)
        await _frames(response, "Created fine-tune")
        # The reads' connections were given back: none of this context is still connected.
        from django.db import connections

        opened.extend(c for c in connections.all(initialized_only=True) if c.connection)
        await response.streaming_content.aclose()

    with mock.patch("jobs.streams.KEEPALIVE_SECONDS", 3600.0):
        _run(follow())

    assert opened == []


def test_every_writer_of_message_events_notifies_and_metrics_do_not(owner: Persona) -> None:
    """The post_save receiver publishes for every writer of a message event (emit, W&B's
    warnings, the admin); the per-step metrics events, which no stream shows, wake nobody."""
    job = _create(owner)
    published: list[int] = []
    with mock.patch.object(notify, "_publish_now", published.append):
        events.emit_metrics(job, step=1, total_steps=2, row={"training_loss": 1.0})
        JobEvent.objects.create(job=job, message="by hand", data={})
        events.emit(job, "started")

    assert published == [job.pk, job.pk]
