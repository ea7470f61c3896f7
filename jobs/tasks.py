"""Celery entry points. No logic here: each task takes ids and calls a worker-side module."""

from __future__ import annotations

from functools import partial

from celery import Task, shared_task
from django.db import transaction

from jobs import comparison, fleet, liveness, retention, runner
from jobs.models import FineTuneJob


@shared_task(name="jobs.run_training_job", bind=True, max_retries=None, acks_late=True)
def run_training_job(self: Task[[int], None], job_id: int) -> None:
    outcome = runner.job_run(
        job_id=job_id, worker=self.request.hostname, left_queue=send_forecast_runs
    )
    if outcome != runner.DONE:  # files still validating, or the org is at its running limit
        # Backs off to 30 s; a job waits at most TUNERY_JOB_FILE_WAIT_SECONDS for its files.
        wait = min(30, 2 * 2 ** min(self.request.retries, 4))
        raise self.retry(countdown=wait if outcome == runner.WAIT_FOR_FILES else 15)


def send_forecast_runs(parent: FineTuneJob) -> None:
    """Send the messages of a scaling forecast's queued runs, once their parent left the queue
    (sent with the parent's, a broker that doesn't keep the order of messages sent in the same
    millisecond could start a run before the job it measures)."""
    if not parent.scaling_forecast:
        return
    for child in parent.children.filter(status=FineTuneJob.Status.QUEUED).order_by("created_at"):
        transaction.on_commit(partial(run_training_job.delay, child.pk))


@shared_task(name="jobs.requeue_stale_jobs")
def requeue_stale_jobs() -> None:
    for job_id in liveness.jobs_reap():
        run_training_job.delay(job_id)
    liveness.jobs_settle_stale_pauses()


@shared_task(name="jobs.compare_checkpoints", acks_late=True)
def compare_checkpoints(job_id: int) -> None:
    comparison.comparison_run(job_id=job_id)


@shared_task(name="jobs.collect_garbage")
def collect_garbage() -> dict[str, int]:
    return retention.collect_garbage()


@shared_task(name="jobs.sweep_workers")
def sweep_workers() -> int:
    return fleet.workers_sweep()
