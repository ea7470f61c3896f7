"""Celery entry points. No logic here: each task takes ids and calls datasets.processing."""

from __future__ import annotations

from celery import shared_task

from datasets import processing


@shared_task(name="datasets.validate_file")
def validate_file(file_id: int) -> None:
    # The `default` queue (CELERY_TASK_DEFAULT_QUEUE): validation runs anywhere, not on GPUs.
    processing.file_validate(file_id=file_id)
