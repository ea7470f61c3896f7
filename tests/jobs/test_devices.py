"""Device-aware jobs: workers announce their devices, a job asks for a device class and count,
routing sends it to that class's queue, the pre-flight uses that class's measured speed.
PostgreSQL and Redis are real; the worker tests start real Celery workers (tests.workers)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone

from common.errors import ServiceError
from jobs import fleet, routing, selectors, services
from jobs.models import FineTuneJob, JobEvent, TrainingWorker
from jobs.services import JobRequest
from models_app.models import BaseModel
from tests.conftest import Persona, sms_subset, validated_upload
from tests.factories import FileFactory
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

CPU = {"kind": "cpu", "count": 2, "memory_gib": 7.5, "names": []}
GPUS = {"kind": "cuda", "count": 2, "memory_gib": 79.1, "names": ["NVIDIA H100 80GB HBM3"]}


def _announce(name: str, cls: str, info: dict[str, Any] = GPUS) -> TrainingWorker:
    # Its queues as scripts/training-worker subscribes them (the default class is not its own).
    queues = routing.worker_queues(cls, int(info["count"]), "none")
    return fleet.worker_announce(name=name, queues=queues, info=info, device_class=cls)


def _queued(queue: str) -> int:
    import redis

    length = redis.Redis.from_url(django_settings.CELERY_BROKER_URL).llen(queue)
    assert isinstance(length, int)
    return length


def _create(owner: Persona, body: dict[str, Any], legacy: bool = False) -> Any:
    training = FileFactory.create(organization=owner.org)
    path = "/v1/fine-tunes" if legacy else "/v1/fine_tuning/jobs"
    return owner.api().post(
        path,
        {"model": "ada", "training_file": training.public_id, **body},
        content_type="application/json",
    )


def _browser(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


# --- announcements ----------------------------------------------------------------------------


def test_a_worker_not_seen_for_a_while_is_gone_and_is_swept_later(settings: Any) -> None:
    settings.TUNERY_WORKER_GONE_SECONDS = 120
    worker = _announce("training@gpu-1", "cuda")
    assert worker.is_online and worker.devices_shown == (
        "2 × NVIDIA H100 80GB HBM3 (79.1 GiB each)"
    )
    old = timezone.now() - timedelta(seconds=121)
    TrainingWorker.objects.filter(pk=worker.pk).update(last_seen_at=old)
    worker.refresh_from_db()
    assert not worker.is_online  # gone, not deleted: the admin still lists it
    assert fleet.workers_sweep() == 0
    assert (
        fleet.workers_sweep(now=old + timedelta(seconds=settings.TUNERY_WORKER_FORGET_SECONDS + 1))
        == 1
    )
    assert not TrainingWorker.objects.exists()

    # A clean shutdown is gone at once; its beat (after a sweep) writes the row again.
    _announce("training@gpu-2", "cuda")
    fleet.worker_stopped(name="training@gpu-2")
    assert not TrainingWorker.objects.get(name="training@gpu-2").is_online
    beat = fleet.WorkerBeat(
        name="training@gpu-3", queues=["training.cuda"], info=GPUS, device_class="cuda"
    )
    assert beat._beat() and TrainingWorker.objects.get(name="training@gpu-3").is_online


@pytest.mark.slow
def test_a_real_worker_announces_itself_runs_its_class_and_says_goodbye(
    owner: Persona, tiny_model_path: str, tmp_path: Path
) -> None:
    """A worker of class `testcpu`, started as production starts one (scripts/training-worker),
    announces itself and its queues on start, refreshes its row, picks up a job that asked for
    that class and 2 devices (2 gloo processes under torchrun, from `training.testcpu.x2`), and
    the job page names it and its devices."""
    if not django_settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("a real broker")
    purge_broker()
    BaseModel.objects.update_or_create(
        name="tiny-llama",
        defaults={"source": tiny_model_path, "context_length": 512, "base_lr_lora": 2e-2},
    )
    with celery_worker(
        queues="devices",
        TUNERY_WORKER_DEVICE_CLASS="testcpu",
        TUNERY_DEFAULT_DEVICE_CLASS="cpu",  # not its class: it takes no plain `training` job
        TUNERY_WORKER_ANNOUNCE_SECONDS="0.5",
    ) as proc:
        worker = wait_for(
            lambda: TrainingWorker.objects.filter(device_class="testcpu").first(),
            120,
            what="the worker's announcement",
        )
        assert worker.device_kind in ("cpu", "cuda")
        assert worker.device_count >= 1 and worker.memory_gib > 0 and worker.is_online
        assert sorted(worker.queues) == sorted(
            routing.worker_queues("testcpu", worker.device_count, "cpu")
        )
        first = worker.last_seen_at
        wait_for(
            lambda: TrainingWorker.objects.get(pk=worker.pk).last_seen_at > first,
            30,
            what="the worker's beat",
        )

        training = validated_upload(owner, "sms.jsonl", sms_subset(tmp_path, 12).read_bytes())
        response = owner.api().post(
            "/v1/fine_tuning/jobs",
            {
                "model": "tiny-llama",
                "training_file": training,
                "hyperparameters": {"n_epochs": 1, "batch_size": 2},
                "seed": 3,
                "device_class": "testcpu",
                "device_count": min(2, worker.device_count),
            },
            content_type="application/json",
        )
        assert response.status_code == 200, response.content
        job = FineTuneJob.objects.get(public_id=response.json()["id"])
        assert not job.events.filter(
            message__contains="No training worker"
        ).exists()  # one is online
        wait_for(lambda: FineTuneJob.objects.get(pk=job.pk).is_finished, 300, 1, what="the job")
        job.refresh_from_db()
        assert job.status == "succeeded", job.error
        assert job.worker == worker.name
        if worker.device_count >= 2:
            log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]  # tests.workers
            assert "Training under torchrun in 2 processes" in log

        page = _browser(owner).get(job.get_absolute_url()).content.decode()
        assert worker.name in page and worker.devices_shown in page
        assert "devices: testcpu" in page
    worker.refresh_from_db()
    assert worker.stopped_at is not None and not worker.is_online  # a clean shutdown


# --- the create field -------------------------------------------------------------------------


def test_the_device_fields_are_stored_returned_and_routed(owner: Persona, settings: Any) -> None:
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("reads the queues on Redis")
    purge_broker()
    _announce("training@gpu-1", "cuda")
    response = _create(owner, {"device_class": "cuda", "device_count": 2})
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["device_class"] == "cuda" and body["device_count"] == 2
    job = FineTuneJob.objects.get(public_id=body["id"])
    assert (job.device_class, job.device_count) == ("cuda", 2)
    assert _queued("training.cuda.x2") == 1 and _queued("training") == 0
    assert not job.events.filter(message__contains="No training worker").exists()
    detail = owner.api().get(f"/v1/fine_tuning/jobs/{job.public_id}").json()
    assert (detail["device_class"], detail["device_count"]) == ("cuda", 2)

    # The legacy API takes the same extension; without one, the base model's class.
    legacy = _create(owner, {"device_class": "cuda"}, legacy=True)
    assert legacy.status_code == 200, legacy.content
    assert legacy.json()["device_class"] == "cuda" and legacy.json()["device_count"] is None
    assert _queued("training.cuda") == 1
    plain = _create(owner, {}).json()
    assert plain["device_class"] is None and plain["device_count"] is None
    assert _queued("training") == 1
    purge_broker()


def test_a_class_no_worker_announced_is_accepted_with_a_warning(
    owner: Persona, settings: Any
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        response = _create(owner, {"device_class": "tpu", "device_count": 8})
        assert response.status_code == 200, response.content
        job = FineTuneJob.objects.get(public_id=response.json()["id"])
        warning = job.events.get(message__contains="No training worker")
        assert warning.level == "warn"
        assert "No training worker for device class tpu with 8 devices is online" in warning.message

        # Nothing asked and no worker ever announced (workers that predate announcing): quiet.
        quiet = _create(owner, {}).json()
        assert not JobEvent.objects.filter(
            job__public_id=quiet["id"], message__contains="No training worker"
        ).exists()

        # Announced but gone: accepted, still warned, and the count is checked.
        _announce("training@tpu-1", "tpu")
        TrainingWorker.objects.update(stopped_at=timezone.now())
        again = _create(owner, {"device_class": "tpu", "device_count": 2})
        assert again.status_code == 200, again.content
        assert JobEvent.objects.filter(message__contains="No training worker").count() == 2
        # Once workers announce, a job following its base model's class is warned too.
        _create(owner, {})
        assert JobEvent.objects.filter(message__contains="No training worker").count() == 3


def test_a_multi_device_job_waits_for_a_worker_with_enough_devices(owner: Persona) -> None:
    """A job asking for 2 devices goes to `training.cuda.x2`: a 1-GPU worker of the class
    doesn't consume it (it would run 2 processes on 1 GPU), a 4-GPU worker does."""
    assert routing.queue_for_class("cuda", 2) == "training.cuda.x2"
    assert routing.queue_for_class("cuda", 1) == routing.queue_for_class("cuda") == "training.cuda"
    one = _announce("training@one-gpu", "cuda", {**GPUS, "count": 1})
    four = _announce("training@four-gpus", "cuda", {**GPUS, "count": 4})
    assert one.queues == ["training.cuda"]
    assert four.queues == ["training.cuda", *(f"training.cuda.x{n}" for n in (2, 3, 4))]
    with mock.patch("jobs.tasks.run_training_job.delay"):
        TrainingWorker.objects.filter(pk=four.pk).update(stopped_at=timezone.now())
        response = _create(owner, {"device_class": "cuda", "device_count": 2})
        assert response.status_code == 200, response.content
        job = FineTuneJob.objects.get(public_id=response.json()["id"])
        assert routing.training_queue(job.pk) == "training.cuda.x2"
        # The 1-GPU worker is online, but it can't run this job: the user is told.
        warning = job.events.get(message__contains="No training worker")
        assert "device class cuda with 2 devices is online" in warning.message
        alone = _create(owner, {"device_class": "cuda", "device_count": 1}).json()
        assert not JobEvent.objects.filter(
            job__public_id=alone["id"], message__contains="No training worker"
        ).exists()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"device_class": 3}, "device_class"),
        ({"device_class": ["cuda"]}, "device_class"),
        ({"device_class": "CUDA"}, "device_class"),
        ({"device_class": "cuda 80g"}, "device_class"),
        ({"device_class": "x" * 41}, "device_class"),
        ({"device_count": 0}, "device_count"),
        ({"device_count": 65}, "device_count"),
        ({"device_count": "2"}, "device_count"),
        ({"device_count": True}, "device_count"),
        ({"device_count": 1.5}, "device_count"),
        ({"device_class": "cuda", "device_count": 4}, "device_count"),  # the workers have 2
    ],
)
def test_bad_device_fields_are_400s_naming_the_param(
    owner: Persona, body: dict[str, Any], param: str
) -> None:
    _announce("training@gpu-1", "cuda")
    with mock.patch("jobs.tasks.run_training_job.delay") as delay:
        for legacy in (False, True):
            response = _create(owner, body, legacy=legacy)
            assert response.status_code == 400, response.content
            error = response.json()["error"]
            assert error["param"] == param and error["type"] == "invalid_request_error"
    assert not delay.called and not FineTuneJob.objects.exists()
    if param == "device_count" and "device_class" in body:
        assert "at most 2" in error["message"]


def test_a_dpo_job_asks_for_one_device(owner: Persona) -> None:
    with pytest.raises(ServiceError) as raised:
        services._devices(
            JobRequest(
                api="current", model="ada", training_file="x", method_type="dpo", device_count=2
            ),
            BaseModel(name="b", source="s"),
        )
    assert raised.value.param == "device_count"


def test_the_form_sends_the_device_fields(owner: Persona) -> None:
    good = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        response = _browser(owner).post(
            "/jobs/new/",
            {
                "model": "SmolLM2-135M-Instruct",
                "training_file": good.public_id,
                "training_method": "lora",
                "method_type": "supervised",
                "device_class": "cpu",
                "device_count": "2",
            },
        )
    assert response.status_code in (200, 302), response.content
    job = FineTuneJob.objects.get()
    assert (job.device_class, job.device_count) == ("cpu", 2)
    page = _browser(owner).get(job.get_absolute_url()).content.decode()
    assert "devices: cpu × 2" in page


# --- the pre-flight ---------------------------------------------------------------------------


def _finished(owner: Persona, base: BaseModel, speed: float, **devices: Any) -> None:
    FineTuneJob.objects.create(
        public_id=f"ftjob-{speed}",
        organization=owner.org,
        model=base.name,
        base_model=base,
        training_file=FileFactory.create(organization=owner.org),
        seed=1,
        status=FineTuneJob.Status.SUCCEEDED,
        tokens_per_second=speed,
        finished_at=timezone.now() + timedelta(seconds=speed / 1000),  # faster: newer
        **devices,
    )


def test_the_preflight_uses_the_target_devices_measured_speed(owner: Persona) -> None:
    base = BaseModel.objects.create(name="m", source="package:none", device_class="cpu")
    assert selectors.measured_tokens_per_second(base_model_id=base.pk) == (None, "any")
    _finished(owner, base, 100.0)  # no class asked: ran on the base's, cpu
    _finished(owner, base, 5000.0, device_class="cuda")
    _finished(owner, base, 9000.0, device_class="cuda", device_count=2)

    def speed(cls: str | None, count: int | None = None) -> tuple[float | None, str]:
        return selectors.measured_tokens_per_second(
            base_model_id=base.pk, device_class=cls, device_count=count
        )

    assert speed(None) == (9000.0, "any")  # today's behaviour: the latest job
    assert speed("cpu", 1) == (100.0, "class_count")
    assert speed("cuda", 1) == (5000.0, "class_count")  # no count asked: one process
    assert speed("cuda", 2) == (9000.0, "class_count")
    assert speed("cuda", 4) == (9000.0, "class")  # never on 4: the class's latest
    assert speed("tpu", 1) == (9000.0, "any")  # nothing on that class yet: the latest

    estimate = selectors.job_preflight(
        examples=100,
        tokens=90000,
        base_model_id=base.pk,
        n_epochs=1,
        batch_size=None,
        learning_rate_multiplier=None,
        device_class="cuda",
        device_count=1,
    )
    assert estimate["tokens_per_second"] == 5000.0 and estimate["seconds"] == 18.0


def test_the_create_forms_preflight_says_when_no_worker_of_the_class_is_online(
    owner: Persona,
) -> None:
    good = FileFactory.create(organization=owner.org)
    BaseModel.objects.filter(name="SmolLM2-135M-Instruct").update(device_class="cuda")

    def preflight(**extra: str) -> str:
        return (
            _browser(owner)
            .get(
                "/jobs/new/preflight/",
                {"model": "SmolLM2-135M-Instruct", "training_file": good.public_id, **extra},
                headers={"HX-Request": "true"},
            )
            .content.decode()
        )

    assert "No worker for device class cuda is online" in preflight()
    _announce("training@gpu-1", "cuda")
    assert 'data-testid="no-worker"' not in preflight()
    assert "No worker for device class cpu is online" in preflight(device_class="cpu")
