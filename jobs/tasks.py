"""Celery entry points. No logic here: each task takes ids and calls jobs.runner."""

from __future__ import annotations

from celery import shared_task

from jobs import runner


@shared_task(name="jobs.run_training_job", bind=True, max_retries=None, acks_late=True)
def run_training_job(self, job_id: int) -> None:  # type: ignore[no-untyped-def]
    outcome = runner.job_run(job_id=job_id)
    if outcome != runner.DONE:  # files still validating, or the org is at its running limit
        raise self.retry(countdown=2 if outcome == runner.WAIT_FOR_FILES else 15)


@shared_task(name="jobs.requeue_stale_jobs")
def requeue_stale_jobs() -> None:
    for job_id in runner.jobs_requeue_stale():
        run_training_job.delay(job_id)
