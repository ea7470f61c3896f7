"""Training workers announce their devices (worker side): one row per worker, written when it
starts (jobs.worker_signals, on Celery's `worker_ready`) and kept fresh by a beat thread, the
same `Renewer` the job heartbeats use (jobs.liveness). The web side reads the rows through
jobs.selectors: the create form says when no worker of a job's device class is online, job
creation refuses a device count no worker of the class has, and the job page names the
devices its worker has.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from common.transient import Renewer
from jobs.models import TrainingWorker

logger = logging.getLogger(__name__)


def is_training(queues: list[str]) -> bool:
    """Does a worker consuming these queues train? (jobs.routing names them.)"""
    return any(q == "training" or q.startswith("training.") for q in queues)


def worker_announce(
    *, name: str, queues: list[str], info: dict[str, Any], device_class: str
) -> TrainingWorker:
    """Write (or rewrite, after a restart under the same node name) this worker's row."""
    now = timezone.now()
    worker, _ = TrainingWorker.objects.update_or_create(
        name=name[:200],
        defaults={
            "hostname": socket.gethostname()[:200],
            "pid": os.getpid(),
            "device_class": device_class[:40],
            "device_kind": str(info["kind"])[:8],
            "device_count": int(info["count"]),
            "device_names": list(info.get("names") or []),
            "memory_gib": float(info["memory_gib"]),
            "queues": sorted(queues),
            "started_at": now,
            "last_seen_at": now,
            "stopped_at": None,
        },
    )
    return worker


def worker_stopped(*, name: str) -> None:
    """A worker shutting down cleanly is gone at once (a killed one, after GONE_SECONDS)."""
    TrainingWorker.objects.filter(name=name).update(stopped_at=timezone.now())


def workers_sweep(now: datetime | None = None) -> int:
    """Beat task: forget workers gone for TUNERY_WORKER_FORGET_SECONDS. Returns how many."""
    now = now or timezone.now()
    old = now - timedelta(seconds=settings.TUNERY_WORKER_FORGET_SECONDS)
    deleted, _ = TrainingWorker.objects.filter(last_seen_at__lt=old).delete()
    return deleted


class WorkerBeat(Renewer):
    """Moves the worker's `last_seen_at` every TUNERY_WORKER_ANNOUNCE_SECONDS: one UPDATE. A row
    swept meanwhile (the database was down for days, say) is written again."""

    def __init__(self, **announcement: Any) -> None:
        super().__init__(self._beat, settings.TUNERY_WORKER_ANNOUNCE_SECONDS, "worker-announce")
        self.announcement = announcement

    def _beat(self) -> bool:
        name = self.announcement["name"]
        seen = TrainingWorker.objects.filter(name=name).update(
            last_seen_at=timezone.now(), stopped_at=None
        )
        if not seen:
            worker_announce(**self.announcement)
        return True  # never lost: the row is this worker's for as long as it runs
