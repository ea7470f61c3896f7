"""Runs a Celery worker for tests: `python -m tests.datasets.celery_worker QUEUES`.

The settings module is the project's own; TUNERY_TEST_WORKER_SETTINGS (JSON, written by the
`celery_worker_factory` fixture) points it at the test database and the test media root before
Django starts, so the worker sees exactly what the test process writes.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    queues = sys.argv[1]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    from django.conf import settings

    overrides = json.loads(os.environ.get("TUNERY_TEST_WORKER_SETTINGS", "{}"))
    settings.DATABASES["default"]["NAME"] = overrides["DATABASE_NAME"]
    settings.MEDIA_ROOT = overrides["MEDIA_ROOT"]
    if overrides.get("TUNERY_TOKENIZER_DIR"):
        settings.TUNERY_TOKENIZER_DIR = overrides["TUNERY_TOKENIZER_DIR"]

    import django

    django.setup()
    from config.celery import app

    app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname",
            f"test-{os.getpid()}@%h",
            "--loglevel",
            "INFO",
        ]
    )


if __name__ == "__main__":
    main()
