"""The Celery app. Queues: `training` (one job per worker, GPU hosts) and `default`."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tunery")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Training messages go to their base model's device-class queue (jobs.routing); then the
# static routes of the settings.
app.conf.task_routes = ("jobs.routing.route", app.conf.task_routes)
app.autodiscover_tasks()
# Training workers announce their devices (jobs.fleet) when ready; the handlers import Django
# only when they run.
import jobs.worker_signals  # noqa: E402, F401


class QuietHousekeeping(logging.Filter):
    """Drops the INFO lines ("Sending due task", "Task … received", "… succeeded") of beat's
    periodic housekeeping tasks: the reaper alone runs every TUNERY_REAPER_SECONDS (5 s), and
    its three lines a round buried everything else `make run` printed. Warnings and errors
    from the same tasks still pass, and at DEBUG nothing is dropped."""

    def __init__(self, tasks: Iterable[str]) -> None:
        super().__init__()
        self.tasks = frozenset(tasks)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO:
            return True
        args = record.args
        values = args.values() if isinstance(args, Mapping) else (args or ())
        return not any(isinstance(value, str) and value in self.tasks for value in values)


@after_setup_logger.connect
def quiet_housekeeping(logger: logging.Logger, loglevel: int | str | None = None, **_: Any) -> None:
    if isinstance(loglevel, int) and loglevel <= logging.DEBUG:  # Celery passes it as a number
        return
    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    tasks |= set(app.conf.beat_schedule)  # beat's line names the entry and the task
    for handler in logger.handlers:
        handler.addFilter(QuietHousekeeping(tasks))
