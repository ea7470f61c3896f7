"""Stateless hosts: a job killed on host A resumes on host B from the artifact store, and the
model B trained is served by an inference service on host C.

Every "host" is its own process with its own DATA_DIR (no shared disk: A's is even deleted
once it is killed), sharing only PostgreSQL, Redis and a real S3-compatible server (moto's,
its own process, over HTTP). The test process plays the web host, with a DATA_DIR of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import artifacts
from common.store import COMPLETE
from jobs.models import FineTuneJob, JobEvent
from tests.conftest import Persona
from tests.inference import inference_service
from tests.jobs.test_recovery import WORKER_ENV, make_job, metrics_steps
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def web_host(settings: Any, s3_server: Any, tmp_path: Path) -> Iterator[dict[str, str]]:
    """This process as a web host on the S3 store; the environment every other host shares."""
    bucket = s3_server.new_bucket()
    env = s3_server.env(bucket)
    web = tmp_path / "web"
    web.mkdir()
    settings.DATA_DIR = web
    settings.MEDIA_ROOT = web / "media"
    settings.STORAGE_BACKEND = "s3"
    settings.S3_BUCKET = bucket
    settings.S3_ENDPOINT_URL = env["S3_ENDPOINT_URL"]
    settings.S3_REGION = env["S3_REGION"]
    settings.S3_ACCESS_KEY_ID = env["S3_ACCESS_KEY_ID"]
    settings.S3_SECRET_ACCESS_KEY = env["S3_SECRET_ACCESS_KEY"]
    settings.TUNERY_STORE_CACHE_DIR = web / "store-cache"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": bucket,
                "endpoint_url": env["S3_ENDPOINT_URL"],
                "region_name": env["S3_REGION"],
                "access_key": env["S3_ACCESS_KEY_ID"],
                "secret_key": env["S3_SECRET_ACCESS_KEY"],
                "location": "media",
                "file_overwrite": False,
            },
        },
    }
    settings.TUNERY_HEARTBEAT_LOST_SECONDS = 2
    settings.TUNERY_HEARTBEAT_STALE_SECONDS = 4
    artifacts.reset()
    purge_broker()
    yield env
    artifacts.reset()


def _host(tmp_path: Path, name: str, env: dict[str, str]) -> dict[str, str]:
    data = tmp_path / name
    data.mkdir()
    return {**env, "DATA_DIR": str(data), "TUNERY_STORE_CACHE_DIR": str(data / "store-cache")}


def _stored_resume_steps(job: FineTuneJob) -> list[int]:
    return sorted(
        int(k.split("/")[4].removeprefix("step-"))
        for k in artifacts.store().list(f"jobs/{job.public_id}")
        if k.endswith(f"/{COMPLETE}") and "/resume/" in k
    )


def test_a_job_killed_on_one_host_resumes_on_another_and_a_third_serves_its_model(
    owner: Persona, tiny_base: Any, tmp_path: Path, web_host: dict[str, str], settings: Any
) -> None:
    from jobs import tasks

    job = make_job(owner, tmp_path, examples=24)  # 1 epoch of 24 steps; the upload is in S3
    assert artifacts.store().exists(f"media/{job.training_file.blob.name}")
    host_a = _host(tmp_path, "host-a", web_host)
    with celery_worker("training,default", None, {0}, **WORKER_ENV, **host_a) as worker_a:
        # Its first resume checkpoint (every 5 steps) reached the store: kill -9.
        wait_for(lambda: _stored_resume_steps(job), 180, 0.1, what="a stored checkpoint")
        os.killpg(worker_a.pid, signal.SIGKILL)
        worker_a.wait()
    shutil.rmtree(host_a["DATA_DIR"])  # host A is gone, disk and all
    reached = max(metrics_steps(job, attempt=1))
    stored = max(_stored_resume_steps(job))

    def requeued() -> bool:
        tasks.requeue_stale_jobs.run()  # beat's reaper, run here with short thresholds
        return FineTuneJob.objects.get(pk=job.pk).status == FineTuneJob.Status.QUEUED

    wait_for(requeued, 30, 0.2, what="the reaper to requeue the job")
    host_b = _host(tmp_path, "host-b", web_host)
    with celery_worker("training,default", None, {0}, **WORKER_ENV, **host_b):
        wait_for(lambda: FineTuneJob.objects.get(pk=job.pk).status in FineTuneJob.FINISHED, 180)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    assert job.attempts == 2
    resumed = JobEvent.objects.get(job=job, message__startswith="Fine-tuning job resumed from")
    assert resumed.step is not None and resumed.step >= stored > 0, (reached, stored)
    assert metrics_steps(job) == list(range(1, 25))  # every step once, across two hosts
    # The model and the epoch's checkpoint are in the store; the resume checkpoints (with
    # optimizer state) are gone from it once the job succeeded.
    model = job.result_model
    assert model.artifact_dir == f"models/{owner.org.pk}/{job.public_id}-a2"
    assert artifacts.store().exists(f"{model.artifact_dir}/adapter_model.safetensors")
    epoch = f"jobs/{job.public_id}/checkpoints/step-24"
    assert artifacts.store().exists(f"{epoch}/{COMPLETE}")
    assert artifacts.store().exists(f"{epoch}/model/adapter_model.safetensors")
    assert _stored_resume_steps(job) == []
    # The results file, written on B, reads on the web host (streamed from the store).
    assert job.result_file.blob.open("rb").read().decode().startswith("step,")

    # Host C: an inference service with a DATA_DIR of its own serves the model B trained.
    host_c = _host(tmp_path, "host-c", web_host)
    with inference_service(log=tmp_path / "host-c.log", env=host_c) as url:
        settings.TUNERY_INFERENCE_URL = url
        response = owner.api().post(
            "/v1/completions",
            {"model": model.name, "prompt": "Free entry", "max_tokens": 4, "temperature": 0},
            content_type="application/json",
        )
        assert response.status_code == 200, response.content
        assert response.json()["model"] == model.name
        cached = Path(host_c["DATA_DIR"]) / "store-cache" / "data" / model.artifact_dir
        assert (cached / "adapter_config.json").is_file()

        # Deleting the model deletes its objects.
        deleted = owner.api().delete(f"/v1/models/{model.name}")
        assert deleted.status_code == 200, deleted.content
        assert artifacts.store().list(model.artifact_dir) == []


def _torchrun_pids() -> list[int]:
    import psutil

    return [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "engine.distributed" in " ".join(p.info["cmdline"] or [])
        and p.pid != os.getpid()
        and psutil.Process(p.pid).ppid() != 1  # not some other session's orphans
    ]


def test_a_job_trains_in_two_processes_under_torchrun(
    owner: Persona, tiny_base: Any, tmp_path: Path, settings: Any
) -> None:
    from jobs import runner

    settings.TUNERY_TRAIN_PROCESSES = 2
    job = make_job(owner, tmp_path, examples=12)
    assert runner.job_run(job_id=job.pk) == runner.DONE
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    # Rank 0's callbacks reached the database through the runner: every step once, the
    # epoch's checkpoint, the model.
    assert metrics_steps(job) == list(range(1, 13))
    assert job.checkpoints.count() == 1
    assert (Path(job.result_model.artifact_dir) / "adapter_model.safetensors").is_file()
    log = next(
        Path(settings.DATA_DIR, "jobs", job.public_id).glob("attempt-*/torchrun/*.log"), None
    )
    assert log is None  # the attempt dirs are gone with the job's success


def test_a_full_fine_tune_trains_sharded_in_two_processes(
    owner: Persona, tiny_base: Any, tmp_path: Path, settings: Any
) -> None:
    from jobs import runner, services
    from jobs.services import JobRequest
    from tests.conftest import sms_subset, validated_upload

    settings.TUNERY_TRAIN_PROCESSES = 2
    training_file = validated_upload(owner, "sms.jsonl", sms_subset(tmp_path, 8).read_bytes())
    job = services.job_create(
        organization=owner.org,
        created_by=owner.user,
        req=JobRequest(
            api="current",
            model="tiny-llama",
            training_file=training_file,
            method="full",
            n_epochs=1,
            batch_size=2,
            seed=3,
        ),
    )
    assert runner.job_run(job_id=job.pk) == runner.DONE
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    # engine.fsdp's rule: a full fine-tune over 2 processes is sharded; rank 0's event came
    # through the runner, and the model it wrote from the gathered weights is a whole one.
    assert JobEvent.objects.filter(
        job=job, message__startswith="Sharding the model across 2 processes (FSDP)"
    ).exists()
    assert metrics_steps(job) == [1, 2, 3, 4]
    assert (Path(job.result_model.artifact_dir) / "model.safetensors").is_file()


def test_cancelling_a_torchrun_job_stops_every_rank(
    owner: Persona, tiny_base: Any, tmp_path: Path, settings: Any
) -> None:
    import threading

    from jobs import runner

    settings.TUNERY_TRAIN_PROCESSES = 2
    job = make_job(owner, tmp_path, examples=200)

    def run() -> None:
        from django.db import connection

        try:
            runner.job_run(job_id=job.pk)
        finally:
            connection.close()  # this thread's own connection: the test database is dropped

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_for(lambda: FineTuneJob.objects.get(pk=job.pk).step >= 3, 240, 0.1)
        assert len(_torchrun_pids()) >= 2  # the ranks are running
        cancelled = owner.api().post(f"/v1/fine_tuning/jobs/{job.public_id}/cancel")
        assert cancelled.status_code == 200, cancelled.content
    finally:
        thread.join(120)
    assert not thread.is_alive()
    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.step < 200
    wait_for(lambda: not _torchrun_pids(), 30, what="every rank to exit")
