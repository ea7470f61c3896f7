"""Device-aware routing: which training queue a job's messages go to.

A job may ask for a device class (`FineTuneJob.device_class`, the API's `device_class`); else
its base model's (`BaseModel.device_class`, e.g. `cuda`, `cuda-80g`, `cpu`); else
`TUNERY_DEFAULT_DEVICE_CLASS`. Its training messages (and checkpoint
comparisons) go to the queue `training.<class>`, which only the training workers that can run
them consume (`manage.py worker_devices --queues` tells a worker its queues); no class at all
keeps the one `training` queue of a single-class deployment.

The router runs in the process that sends (web, beat's reaper, a worker's retry) with one
small query; Celery calls it for every task, so it answers None quickly for the others.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

ROUTED = ("jobs.run_training_job", "jobs.compare_checkpoints")


def queue_for_class(device_class: str) -> str:
    return f"training.{device_class}" if device_class else "training"


def training_queue(job_id: int) -> str:
    from jobs.models import FineTuneJob

    row = (
        FineTuneJob.objects.filter(pk=job_id)
        .values_list("device_class", "base_model__device_class")
        .first()
    )
    asked, of_base = row or ("", "")
    return queue_for_class(asked or of_base or settings.TUNERY_DEFAULT_DEVICE_CLASS)


def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    if name not in ROUTED:
        return None
    job_id = args[0] if args else (kwargs or {}).get("job_id")
    if job_id is None:
        return None
    return {"queue": training_queue(int(job_id))}
