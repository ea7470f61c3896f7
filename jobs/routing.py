"""Device-aware routing: which training queue a job's messages go to.

A job may ask for a device class (`FineTuneJob.device_class`, the API's `device_class`); else
its base model's (`BaseModel.device_class`, e.g. `cuda`, `cuda-80g`, `cpu`); else
`TUNERY_DEFAULT_DEVICE_CLASS`. Its training messages (and checkpoint
comparisons) go to the queue `training.<class>`, which only the training workers that can run
them consume (`manage.py worker_devices --queues` tells a worker its queues); no class at all
keeps the one `training` queue of a single-class deployment. A job that asks for N > 1 devices
goes to `training.<class>.x<N>`, which only the workers of that class with at least N devices
consume: a worker with fewer never takes it (it would run N processes on fewer devices).

The router runs in the process that sends (web, beat's reaper, a worker's retry) with one
small query; Celery calls it for every task, so it answers None quickly for the others.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

ROUTED = ("jobs.run_training_job", "jobs.compare_checkpoints")

# The most devices (torchrun processes) one job may ask for.
DEVICE_COUNT_MAX = 64


def queue_for_class(device_class: str, device_count: int | None = None) -> str:
    queue = f"training.{device_class}" if device_class else "training"
    return f"{queue}.x{device_count}" if device_count and device_count > 1 else queue


def worker_queues(device_class: str, device_count: int, default_class: str) -> list[str]:
    """The queues a training worker of `device_class` with `device_count` devices consumes:
    its class's, the plain one when it serves the default class too, and for each of those
    the multi-device queues of every count it can run."""
    bases = [device_class]
    if device_class == default_class or not default_class:
        bases.append("")
    counts = [None, *range(2, min(device_count, DEVICE_COUNT_MAX) + 1)]
    return list(dict.fromkeys(queue_for_class(b, n) for b in bases for n in counts))


def training_queue(job_id: int) -> str:
    from jobs.models import FineTuneJob

    row = (
        FineTuneJob.objects.filter(pk=job_id)
        .values_list("device_class", "base_model__device_class", "device_count")
        .first()
    )
    asked, of_base, count = row or ("", "", None)
    return queue_for_class(asked or of_base or settings.TUNERY_DEFAULT_DEVICE_CLASS, count)


def route(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> Any:
    if name not in ROUTED:
        return None
    job_id = args[0] if args else (kwargs or {}).get("job_id")
    if job_id is None:
        return None
    return {"queue": training_queue(int(job_id))}
