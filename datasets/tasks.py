"""Celery entry points. No logic here: each task takes ids (or nothing) and calls a use case."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from datasets import processing, staging


@shared_task(name="datasets.validate_file")
def validate_file(file_id: int) -> None:
    # The `default` queue (CELERY_TASK_DEFAULT_QUEUE): validation runs anywhere, not on GPUs.
    processing.file_validate(file_id=file_id)


@shared_task(name="datasets.analyse_file")
def analyse_file(file_id: int) -> None:
    # The prepare-data findings of a file validated before the worker stored them (idempotent).
    processing.file_analyse(file_id=file_id)


@shared_task(name="datasets.sweep_staging")
def sweep_staging() -> int:
    # Beat runs it (CELERY_BEAT_SCHEDULE).
    return staging.staging_sweep(max_age_seconds=settings.TUNERY_STAGING_MAX_AGE_SECONDS)


@shared_task(name="datasets.sweep_validations")
def sweep_validations() -> None:
    for file_id in processing.files_sweep_validations():
        validate_file.delay(file_id)
