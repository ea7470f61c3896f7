"""Liveness: the reaper's two stages, hung workers, heartbeats, and what the API and page show."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from jobs import liveness, services
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from tests.conftest import Persona
from tests.factories import FileFactory


def make_job(owner: Persona, api: str = "current") -> FineTuneJob:
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        return services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api=api, model="ada", training_file=training.public_id),
        )


def running(
    owner: Persona, *, silent: float = 0, quiet: float = 0, api: str = "current", **fields: Any
) -> FineTuneJob:
    """A running job whose heartbeat is `silent` s old and whose step is `quiet` s old."""
    job = make_job(owner, api)
    now = timezone.now()
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="running",
        attempts=1,
        worker="celery@gpu-3",
        heartbeat_at=now - timedelta(seconds=silent),
        step_at=now - timedelta(seconds=quiet),
        **fields,
    )
    job.refresh_from_db()
    return job


def test_a_silent_worker_shows_lost_first_then_its_job_is_requeued(
    owner: Persona, settings: Any
) -> None:
    # Defaults: "worker lost" at 20 s, requeue at 45 s.
    job = running(owner, silent=25)

    assert liveness.jobs_reap() == []

    job.refresh_from_db()
    assert job.status == "running" and job.worker_lost_at is not None
    assert job.events.last().message == (
        "Worker lost, resuming: celery@gpu-3 has not reported for 25 s"
    )
    body = owner.api().get(f"/v1/fine_tuning/jobs/{job.public_id}").json()
    assert body["status"] == "running"
    assert body["worker"]["name"] == "celery@gpu-3" and body["worker"]["lost"] is True
    assert body["worker"]["last_seen_at"] == int(job.heartbeat_at.timestamp())
    browser = Client()
    browser.force_login(owner.user)
    page = browser.get(job.get_absolute_url()).content.decode()
    assert 'data-testid="worker-lost"' in page and "celery@gpu-3" in page

    assert liveness.jobs_reap() == []  # announced once

    FineTuneJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=50)
    )
    assert liveness.jobs_reap() == [job.pk]
    job.refresh_from_db()
    assert job.status == "queued"
    assert "the job goes back in the queue" in job.events.last().message
    assert job.events.filter(message__startswith="Worker lost, resuming").count() == 1


def test_a_worker_that_beats_again_clears_the_lost_mark(owner: Persona) -> None:
    job = running(owner, silent=25, api="legacy")
    liveness.jobs_reap()

    assert liveness.Heartbeat(job, attempt=1)._beat() is True

    job.refresh_from_db()
    assert job.worker_lost_at is None and job.status == "running"
    assert job.events.last().message == "Worker celery@gpu-3 is reporting again"
    legacy = owner.api().get(f"/v1/fine-tunes/{job.public_id}").json()  # the 0.28 object too
    assert legacy["worker"] == {
        "name": "celery@gpu-3",
        "last_seen_at": int(job.heartbeat_at.timestamp()),
        "attempt": 1,
        "lost": False,
    }
    # A beat of an attempt that no longer owns the job writes nothing and says so.
    assert liveness.Heartbeat(job, attempt=2)._beat() is False


def test_a_worker_that_beats_but_makes_no_progress_is_hung(owner: Persona, settings: Any) -> None:
    settings.TUNERY_HUNG_MIN_SECONDS = 60
    settings.TUNERY_HUNG_STEP_MULTIPLE = 10
    slow = running(owner, quiet=90, seconds_per_step=12.0)  # 90 s < 10 x 12 s: still fine
    hung = running(owner, quiet=90, seconds_per_step=2.0)  # 90 s > max(60, 10 x 2 s)
    loading = running(owner, quiet=90)  # no step yet: TUNERY_HUNG_STARTUP_SECONDS (3600)

    assert liveness.jobs_reap() == [hung.pk]

    hung.refresh_from_db()
    assert hung.status == "queued"
    assert hung.events.last().message.startswith(
        "Worker celery@gpu-3 made no progress for 90 s (hung); the job goes back in the queue"
    )
    for job in (slow, loading):
        job.refresh_from_db()
        assert job.status == "running"


def test_a_job_out_of_attempts_fails_with_the_reason(owner: Persona, settings: Any) -> None:
    settings.TUNERY_MAX_JOB_ATTEMPTS = 1
    job = running(owner, silent=60)

    assert liveness.jobs_reap() == []

    job.refresh_from_db()
    assert job.status == "failed" and job.error["code"] == "worker_lost"
    assert "stopped responding 1 times" in job.error["message"]


def test_a_queued_job_has_no_worker_yet(owner: Persona) -> None:
    job = make_job(owner)

    body = owner.api().get(f"/v1/fine_tuning/jobs/{job.public_id}").json()

    assert body["worker"] is None


@pytest.mark.django_db(transaction=True)  # the retry reconnects, as outside a test transaction
def test_a_start_whose_reply_was_lost_is_announced_once(owner: Persona) -> None:
    """The first attempt's "started" event is written under transient.retry: when the insert
    committed but the connection dropped before its reply, the retry must not write it again
    (seen in CI as two "Fine-tuning job started" events)."""
    from django.db import OperationalError

    from jobs import events, runner
    from jobs.models import JobEvent

    job = make_job(owner)
    real_emit = events.emit
    calls = []

    def committed_then_dropped(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        event = real_emit(*args, **kwargs)
        if len(calls) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return event

    with mock.patch.object(events, "emit", committed_then_dropped):
        runner._begin(job, 1, None)

    started = JobEvent.objects.filter(job=job, message="Fine-tuning job started")
    assert len(calls) == 1 and started.count() == 1
    assert (started.get().attempt, started.get().step) == (1, 0)
