"""Pause and resume (OpenAI's `POST /fine_tuning/jobs/{id}/pause` and `/resume`).

Pausing asks the running attempt to stop: the status becomes `pausing`, which the runner's
`should_stop` hook sees before the next step (`pausing` is still the attempt's: it may write,
jobs.liveness.ATTEMPT_LIVE_STATUSES); the engine then writes a resume checkpoint at that step
and returns, and the runner records `paused` at that step (jobs.runner._settle_pause; if the
worker dies meanwhile, the reaper does, at the newest resume checkpoint). Resuming queues the
job again; the next attempt resumes from that checkpoint exactly as after a crash, and is not
counted as a crash (`pauses`).
docs/adr/0009-paused-status.md says why the statuses are `pausing` and `paused`.
"""

from __future__ import annotations

from functools import partial

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from common.errors import ServiceError
from jobs import events, tasks
from jobs.models import Checkpoint, CheckpointComparison, FineTuneJob
from jobs.selectors import queue_position

Status = FineTuneJob.Status


def _refused(job: FineTuneJob, action: str, allowed: str) -> ServiceError:
    return ServiceError(
        f"Cannot {action} a job that is {job.status}; only {allowed} jobs can be {action}d.",
        param="fine_tuning_job_id",
    )


def job_pause(*, job: FineTuneJob) -> FineTuneJob:
    """RUNNING → PAUSING; the worker checkpoints and frees itself within one step.

    400 for any other status: a queued job has nothing to checkpoint (cancel it instead), a
    paused one is already paused, a finished one is finished.
    """
    with transaction.atomic():
        changed = FineTuneJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(
            status=Status.PAUSING, pauses=F("pauses") + 1, paused_at=timezone.now()
        )
        if changed:
            events.emit(job, "pausing")
    job.refresh_from_db()
    if not changed:
        raise _refused(job, "pause", "running")
    return job


def job_resume(*, job: FineTuneJob) -> FineTuneJob:
    """PAUSED → QUEUED, and the training task is sent again after commit.

    400 for any other status (a `pausing` job is still writing its checkpoint: try again).
    """
    with transaction.atomic():
        changed = FineTuneJob.objects.filter(pk=job.pk, status=Status.PAUSED).update(
            status=Status.QUEUED, paused_at=None, estimated_finish=None
        )
        if changed:
            # A paused job's step is its resume checkpoint's (set when it was paused).
            step = FineTuneJob.objects.values_list("step", flat=True).get(pk=job.pk)
            events.emit(job, "resuming", step=step)
            events.emit(job, "queue", position=queue_position(job))
            transaction.on_commit(partial(tasks.run_training_job.delay, job.pk))
    job.refresh_from_db()
    if not changed:
        if job.status == Status.PAUSING:
            raise ServiceError(
                "The job is still pausing (saving its checkpoint); resume it once it is paused.",
                param="fine_tuning_job_id",
            )
        raise _refused(job, "resume", "paused")
    return job


def comparison_start(*, job: FineTuneJob) -> CheckpointComparison:
    """Queue "compare checkpoints" for a job (again, if it already ran); the worker scores.

    400 without a validation file or exposed checkpoints, or while a comparison is running.
    """
    if job.validation_file is None:
        raise ServiceError(
            "Comparing checkpoints scores them on the validation set: this job has no "
            "validation_file.",
            param="validation_file",
        )
    if not Checkpoint.objects.filter(job=job, exposed=True).exists():
        raise ServiceError(
            "This job has no checkpoints to compare yet.", param="fine_tuning_job_id"
        )
    with transaction.atomic():
        comparison, created = CheckpointComparison.objects.get_or_create(
            job=job, defaults={"requested_at": timezone.now()}
        )
        if not created:
            restarted = CheckpointComparison.objects.filter(
                pk=comparison.pk,
                status__in=(
                    CheckpointComparison.Status.SUCCEEDED,
                    CheckpointComparison.Status.FAILED,
                ),
            ).update(
                status=CheckpointComparison.Status.QUEUED,
                rows=[],
                error="",
                requested_at=timezone.now(),
                finished_at=None,
            )
            if not restarted:
                raise ServiceError(
                    "A comparison of these checkpoints is already running.",
                    param="fine_tuning_job_id",
                )
        transaction.on_commit(partial(tasks.compare_checkpoints.delay, job.pk))
    comparison.refresh_from_db()
    return comparison
