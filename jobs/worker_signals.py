"""Celery worker signals, connected by config/celery.py in every worker process: a training
worker announces its devices when it is ready and stops announcing when it shuts down
(jobs.fleet does the work; this module only adapts Celery's signals to it)."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown

logger = logging.getLogger(__name__)

_beat: Any = None  # the running jobs.fleet.WorkerBeat, if this worker trains


@worker_ready.connect
def announce_devices(sender: Any = None, **kwargs: Any) -> None:
    global _beat
    queues = sorted(sender.app.amqp.queues.consume_from) if sender is not None else []
    from django.conf import settings

    from engine.devices import detect, device_class
    from jobs import fleet

    if not fleet.is_training(queues):
        return  # a default-queue worker has no devices to offer
    try:
        info = detect()
    except Exception:
        logger.exception("could not detect this worker's devices; it does not announce them")
        return
    announcement = {
        "name": sender.hostname,
        "queues": queues,
        "info": info,
        "device_class": device_class(info, settings.TUNERY_WORKER_DEVICE_CLASS),
    }
    try:
        fleet.worker_announce(**announcement)
    except Exception:
        # The worker trains without its row for now; the beat thread writes it.
        logger.exception("could not announce this worker's devices; retrying in the background")
    _beat = fleet.WorkerBeat(**announcement)
    _beat.start()


@worker_shutdown.connect
def announce_stop(sender: Any = None, **kwargs: Any) -> None:
    if _beat is None:
        return
    _beat.stop()
    from jobs import fleet

    try:
        fleet.worker_stopped(name=_beat.announcement["name"])
    except Exception:
        logger.exception("could not record this worker's shutdown; it counts as gone later")
