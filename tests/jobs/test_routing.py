"""Device-aware routing: a base model's device class picks the training queue, on the real
broker (Redis in CI)."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command

from jobs import routing, services
from jobs.services import JobRequest
from models_app.models import BaseModel
from tests.conftest import Persona
from tests.factories import FileFactory
from tests.workers import purge_broker

pytestmark = pytest.mark.django_db(transaction=True)


def _queued(queue: str) -> int:
    import redis

    length = redis.Redis.from_url(settings.CELERY_BROKER_URL).llen(queue)
    assert isinstance(length, int)  # a sync client: never an awaitable
    return length


def _job(owner: Persona, model: str) -> Any:
    training = FileFactory.create(organization=owner.org)
    return services.job_create(
        organization=owner.org,
        created_by=owner.user,
        req=JobRequest(api="current", model=model, training_file=training.public_id),
    )


def test_jobs_go_to_their_base_models_device_class_queue(owner: Persona, settings: Any) -> None:
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("reads the queues on Redis")
    purge_broker()
    BaseModel.objects.create(name="big-model", source="package:none", device_class="gpu80")
    BaseModel.objects.create(name="small-model", source="package:none")

    gpu_job = _job(owner, "big-model")
    assert _queued("training.gpu80") == 1 and _queued("training") == 0
    _job(owner, "small-model")  # no class: the default, here the plain queue
    assert _queued("training") == 1
    settings.TUNERY_DEFAULT_DEVICE_CLASS = "cpu"
    _job(owner, "small-model")
    assert _queued("training.cpu") == 1
    assert routing.training_queue(gpu_job.pk) == "training.gpu80"
    assert routing.route("datasets.validate_file", (1,), {}, {}) is None
    purge_broker()


def test_a_worker_announces_its_devices_and_queues(settings: Any) -> None:
    out = StringIO()
    call_command("worker_devices", stdout=out)
    info = json.loads(out.getvalue())
    assert info["kind"] in ("cpu", "cuda") and info["count"] >= 1 and info["memory_gib"] > 0
    kind, more = info["kind"], range(2, min(info["count"], 64) + 1)
    assert info["queues"] == [
        f"training.{kind}",
        *(f"training.{kind}.x{n}" for n in more),
        "training",
        *(f"training.x{n}" for n in more),
    ]
    settings.TUNERY_WORKER_DEVICE_CLASS = "gpu80"
    settings.TUNERY_DEFAULT_DEVICE_CLASS = "cpu"
    out = StringIO()
    call_command("worker_devices", "--queues", stdout=out)
    assert out.getvalue().strip().split(",")[0] == "training.gpu80"
    assert "training" not in out.getvalue().split(",")
