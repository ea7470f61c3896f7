"""The Celery app. Queues: `training` (one job per worker, GPU hosts) and `default`."""

from __future__ import annotations

import os

from celery import Celery

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
