"""Is a job's worker alive? Heartbeats, the fence every write of an attempt goes through, and
the reaper that requeues the jobs of dead or hung workers.

Timeline of a worker killed at t=0, with the default settings: its last heartbeat is at most
TUNERY_HEARTBEAT_SECONDS (5) old; the reaper, every TUNERY_REAPER_SECONDS (5), marks the job
"worker lost, resuming" once that heartbeat is TUNERY_HEARTBEAT_LOST_SECONDS (20) old, i.e.
within 25 s, and requeues it at TUNERY_HEARTBEAT_STALE_SECONDS (45), within 50 s (plus the
default queue's latency: the reaper is a task there). The next attempt resumes from the newest
resume checkpoint.

A job being paused (`pausing`) is still its attempt's: the attempt may write (it is stopping
to write a resume checkpoint) and beats. If its worker dies meanwhile, the reaper does not
requeue it: `jobs_settle_stale_pauses` ends it `paused`, and its resume continues from the
newest resume checkpoint, as a requeue would. Pause/resume cycles are not crashes: the reaper
counts `attempts - pauses` against TUNERY_MAX_JOB_ATTEMPTS.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from common.transient import Renewer
from jobs import checkpoints, events, forecast
from jobs.models import FineTuneJob

logger = logging.getLogger(__name__)

# The statuses in which an attempt may still write. PAUSING asks the worker to stop and write
# a resume checkpoint (the engine's should_stop is true, may_write still is); a cancelled,
# paused or requeued job is no longer the attempt's.
ATTEMPT_LIVE_STATUSES = (FineTuneJob.Status.RUNNING, FineTuneJob.Status.PAUSING)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owned(job_pk: int, attempt: int) -> QuerySet[FineTuneJob]:
    """The job, if `attempt` still owns it: the fence of every write of an attempt."""
    return FineTuneJob.objects.filter(pk=job_pk, attempts=attempt, status__in=ATTEMPT_LIVE_STATUSES)


def hold(job_pk: int, attempt: int) -> bool:
    """Inside a transaction: lock the job row if `attempt` owns it. True if it does; the
    reaper's requeue then waits for this transaction, so nothing written in it can land after
    the job changed hands."""
    return owned(job_pk, attempt).select_for_update().exists()


class Heartbeat(Renewer):
    """Beats every TUNERY_HEARTBEAT_SECONDS while the attempt runs, through long steps, model
    loading and the final upload; stops once the attempt no longer owns the job."""

    def __init__(self, job: FineTuneJob, attempt: int) -> None:
        super().__init__(self._beat, settings.TUNERY_HEARTBEAT_SECONDS, f"heartbeat-{job.pk}")
        self.job = job
        self.attempt = attempt

    def _beat(self) -> bool:
        mine = owned(self.job.pk, self.attempt)
        now = timezone.now()
        if mine.filter(worker_lost_at__isnull=False).update(heartbeat_at=now, worker_lost_at=None):
            # The reaper had announced it lost (a long pause, a network cut), but it was first.
            events.emit(self.job, "worker_back", worker=self.job.worker, written_by=self.attempt)
            return True
        return bool(mine.update(heartbeat_at=now))


# --- the reaper ---------------------------------------------------------------------------------


def jobs_reap(now: datetime | None = None) -> list[int]:
    """Beat task: announce silent workers, requeue the jobs of dead or hung ones.

    Each requeued job resumes from its last resume checkpoint, up to TUNERY_MAX_JOB_ATTEMPTS
    tries; then it fails with a clear error. Returns the ids to enqueue.
    """
    now = now or timezone.now()
    running = FineTuneJob.objects.filter(status=FineTuneJob.Status.RUNNING)
    lost = now - timedelta(seconds=settings.TUNERY_HEARTBEAT_LOST_SECONDS)
    for job in running.filter(heartbeat_at__lt=lost, worker_lost_at=None):
        _announce_lost(job, now)
    requeue: list[int] = []
    stale = now - timedelta(seconds=settings.TUNERY_HEARTBEAT_STALE_SECONDS)
    for job in running.filter(heartbeat_at__lt=stale).select_related("organization"):
        if _requeue(job, now, "requeued", guard={"heartbeat_at": job.heartbeat_at}):
            requeue.append(job.pk)
    earliest = min(settings.TUNERY_HUNG_MIN_SECONDS, settings.TUNERY_HUNG_STARTUP_SECONDS)
    quiet = running.filter(heartbeat_at__gte=stale, step_at__lt=now - timedelta(seconds=earliest))
    for job in quiet.select_related("organization"):
        assert job.step_at is not None
        silent = (now - job.step_at).total_seconds()
        if silent > hung_after(job) and _requeue(
            job, now, "hung", guard={"step_at": job.step_at}, seconds=int(silent)
        ):
            requeue.append(job.pk)
    return requeue


def hung_after(job: FineTuneJob) -> float:
    """Seconds without a step after which a beating worker counts as hung."""
    if not job.seconds_per_step:
        return float(settings.TUNERY_HUNG_STARTUP_SECONDS)  # still loading, before its first step
    return max(
        float(settings.TUNERY_HUNG_MIN_SECONDS),
        settings.TUNERY_HUNG_STEP_MULTIPLE * job.seconds_per_step,
    )


def _lock(job: FineTuneJob) -> bool:
    """Lock the job's row unless someone holds it: the reaper never waits on a worker frozen
    inside a transaction (PostgreSQL ends that session, and the next round proceeds)."""
    return FineTuneJob.objects.select_for_update(skip_locked=True).filter(pk=job.pk).exists()


def _announce_lost(job: FineTuneJob, now: datetime) -> None:
    with transaction.atomic():
        if not _lock(job):
            return
        marked = FineTuneJob.objects.filter(
            pk=job.pk,
            status=FineTuneJob.Status.RUNNING,
            attempts=job.attempts,
            heartbeat_at=job.heartbeat_at,
            worker_lost_at=None,
        ).update(worker_lost_at=now)
        if marked:
            assert job.heartbeat_at is not None
            events.emit(
                job,
                "worker_lost",
                worker=job.worker or "the worker",
                seconds=int((now - job.heartbeat_at).total_seconds()),
            )


def crashes(job: FineTuneJob) -> int:
    """Attempts that ended without a pause: each resume after a pause claims the job again."""
    return job.attempts - job.pauses


def _requeue(
    job: FineTuneJob, now: datetime, kind: str, *, guard: dict[str, Any], **texts: Any
) -> bool:
    # Guarded on the attempt and on what we read: a worker that just beat (or stepped) keeps
    # its job.
    current = FineTuneJob.objects.filter(
        pk=job.pk, status=FineTuneJob.Status.RUNNING, attempts=job.attempts, **guard
    )
    with transaction.atomic():
        if not _lock(job):
            return False
        if crashes(job) >= settings.TUNERY_MAX_JOB_ATTEMPTS:
            what = "stopped responding" if kind == "requeued" else "hung"
            reason = (
                f"the training worker {what} {crashes(job)} times; giving up (see the worker logs)"
            )
            if current.update(
                status=FineTuneJob.Status.FAILED,
                error={"code": "worker_lost", "message": reason, "param": None},
                finished_at=now,
                worker_lost_at=job.worker_lost_at or now,
            ):
                events.emit(job, "failed", reason=reason)
                forecast.forecast_record(job=job)
            return False
        if not current.update(
            status=FineTuneJob.Status.QUEUED, worker_lost_at=job.worker_lost_at or now
        ):
            return False
        events.emit(
            job,
            kind,
            worker=job.worker or "the worker",
            attempt=crashes(job) + 1,
            max_attempts=settings.TUNERY_MAX_JOB_ATTEMPTS,
            **texts,
        )
    return True


def jobs_settle_stale_pauses(now: datetime | None = None) -> int:
    """Beat task: a job whose worker died while pausing is paused at its newest resume
    checkpoint (which its resume continues from). Returns how many were settled."""
    now = now or timezone.now()
    stale = now - timedelta(seconds=settings.TUNERY_HEARTBEAT_STALE_SECONDS)
    settled = 0
    for job in FineTuneJob.objects.filter(
        status=FineTuneJob.Status.PAUSING, heartbeat_at__lt=stale
    ):
        step = checkpoints.resume_step(job)
        with transaction.atomic():
            if not _lock(job):
                continue
            # Guarded on the attempt and the heartbeat we read, as the requeue is: a worker
            # that just beat is still writing its checkpoint.
            if FineTuneJob.objects.filter(
                pk=job.pk,
                status=FineTuneJob.Status.PAUSING,
                attempts=job.attempts,
                heartbeat_at=job.heartbeat_at,
            ).update(
                status=FineTuneJob.Status.PAUSED,
                step=step,
                estimated_finish=None,
                worker_lost_at=job.worker_lost_at or now,
            ):
                events.emit(job, "paused", step=step)
                settled += 1
    return settled


def worker_json(job: FineTuneJob) -> dict[str, Any] | None:
    """The API's `worker` extension: which worker runs (or last ran) the job, when it last
    reported, and whether it is lost."""
    if not job.worker:
        return None
    return {
        "name": job.worker,
        "last_seen_at": int(job.heartbeat_at.timestamp()) if job.heartbeat_at else None,
        "attempt": job.attempts,
        "lost": job.worker_lost_at is not None,
    }
