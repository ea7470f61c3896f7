"""`manage.py worker_devices [--queues]`: what this host can train on, and the Celery queues a
training worker here consumes (device-aware routing, jobs.routing).

    celery -A config worker -Q "$(python manage.py worker_devices --queues)" --concurrency 1 --pool solo

(`scripts/training-worker` does just that: make run, compose and the admin guide start it.)
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from engine.devices import detect, device_class
from jobs.routing import worker_queues


class Command(BaseCommand):
    help = "Show this host's training devices and the training queues to consume."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--queues", action="store_true", help="print only the comma-separated queue list"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        info = detect()
        cls = device_class(info, settings.TUNERY_WORKER_DEVICE_CLASS)
        queues = worker_queues(cls, int(info["count"]), settings.TUNERY_DEFAULT_DEVICE_CLASS)
        if options["queues"]:
            self.stdout.write(",".join(queues))
            return
        self.stdout.write(json.dumps({**info, "device_class": cls, "queues": queues}, indent=1))
