"""Jobs end to end: real Celery worker processes, the real broker, real (tiny) training, and the
official clients against a live server. (Killed and frozen workers: test_recovery.py.)"""

from __future__ import annotations

import csv
import io
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from jobs import tasks
from jobs.models import FineTuneJob
from models_app.models import FineTunedModel
from tests.conftest import Persona, sms_subset
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

OPENAI_028 = Path(settings.BASE_DIR) / ".venv-openai028" / "bin" / "openai"
LEGACY_COLUMNS = {
    "step",
    "elapsed_tokens",
    "elapsed_examples",
    "training_loss",
    "training_sequence_accuracy",
    "training_token_accuracy",
}


@pytest.fixture(autouse=True)
def clean_broker() -> None:
    purge_broker()


def status_of(job_id: str) -> str:
    return FineTuneJob.objects.get(public_id=job_id).status


def test_current_sdk_end_to_end(
    live_server: Any, owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{live_server.url}/v1", api_key=owner.key, max_retries=0)
    with celery_worker():
        train = client.files.create(file=sms_subset(tmp_path, 48).open("rb"), purpose="fine-tune")
        valid = client.files.create(
            file=sms_subset(tmp_path, 16, name="valid.jsonl", split="valid").open("rb"),
            purpose="fine-tune",
        )
        client.files.wait_for_processing(train.id, poll_interval=0.5, max_wait_seconds=120)
        job = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=train.id,
            validation_file=valid.id,
            hyperparameters={"n_epochs": 2, "batch_size": 4},
            suffix="sms",
            seed=7,
        )
        assert job.status in ("validating_files", "queued")
        wait_for(lambda: status_of(job.id) in FineTuneJob.FINISHED, 240, what="the job to finish")
        job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model.startswith("ft:tiny-llama:acme:sms:")
        assert job.trained_tokens and job.trained_tokens > 0
        assert job.hyperparameters.batch_size == 4

        events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
        messages = [e.message for e in events]
        assert messages[0] == "The job has successfully completed"  # newest first
        assert any(e.type == "metrics" for e in events)
        assert "Completed epoch 2/2" in messages
        checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
        assert [c.step_number for c in checkpoints] == sorted(
            (c.step_number for c in checkpoints), reverse=True
        )
        assert len(checkpoints) == 2
        assert checkpoints[0].fine_tuned_model_checkpoint.endswith(
            f":ckpt-step-{checkpoints[0].step_number}"
        )

        results = client.files.content(job.result_files[0]).text
        header = next(csv.reader(io.StringIO(results)))
        assert set(header) >= LEGACY_COLUMNS and "validation_loss" in header
        assert job.fine_tuned_model in [m.id for m in client.models.list()]

        # A second job, cancelled while it runs: it stops and frees the worker.
        second = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=train.id,
            hyperparameters={"n_epochs": 50, "batch_size": 1},
        )
        wait_for(
            lambda: FineTuneJob.objects.get(public_id=second.id).step > 0,
            120,
            what="training steps",
        )
        assert client.fine_tuning.jobs.cancel(second.id).status == "cancelled"
        wait_for(
            lambda: not FineTuneJob.objects.filter(
                public_id=second.id, heartbeat_at__isnull=False, status="running"
            ).exists(),
            30,
        )
    assert not FineTunedModel.objects.filter(job__public_id=second.id).exists()


def run_028(
    live_server: Any, key: str, *args: str, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_BASE": f"{live_server.url}/v1", "OPENAI_API_KEY": key}
    return subprocess.run(
        [str(OPENAI_028), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_legacy_028_cli_end_to_end(
    live_server: Any, owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    data = sms_subset(tmp_path, 40)
    with celery_worker():
        out = run_028(
            live_server,
            owner.key,
            "api",
            "fine_tunes.create",
            "-t",
            str(data),
            "-m",
            "tiny-llama",
            "--n_epochs",
            "1",
            "--batch_size",
            "4",
            "--suffix",
            "Spam Filter",
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "Job complete! Status: succeeded" in out.stdout, out.stdout + out.stderr
        for expected in (
            "Created fine-tune: ft-",
            "Fine-tune enqueued. Queue number: 0",
            "Fine-tune started",
            "Completed epoch 1/1",
            "Uploaded model: tiny-llama:ft-acme:spam-filter-",
            "Uploaded result file: file-",
            "Fine-tune succeeded",
        ):
            assert expected in out.stdout, out.stdout
        job = FineTuneJob.objects.get()

        listing = run_028(live_server, owner.key, "api", "fine_tunes.list")
        assert job.public_id in listing.stdout
        got = run_028(live_server, owner.key, "api", "fine_tunes.get", "-i", job.public_id)
        assert '"status": "succeeded"' in got.stdout
        events = run_028(live_server, owner.key, "api", "fine_tunes.events", "-i", job.public_id)
        assert "Fine-tune succeeded" in events.stdout
        results = run_028(live_server, owner.key, "api", "fine_tunes.results", "-i", job.public_id)
        assert results.stdout.startswith("step,"), results.stdout + results.stderr

        second = run_028(
            live_server,
            owner.key,
            "api",
            "fine_tunes.create",
            "-t",
            str(data),
            "-m",
            "tiny-llama",
            "--n_epochs",
            "50",
            "--batch_size",
            "1",
            "--no_follow",
            "--no_check_if_files_exist",
        )
        second_id = FineTuneJob.objects.exclude(pk=job.pk).get().public_id
        assert second_id in second.stdout
        cancelled = run_028(live_server, owner.key, "api", "fine_tunes.cancel", "-i", second_id)
        assert '"status": "cancelled"' in cancelled.stdout, cancelled.stdout + cancelled.stderr


def test_a_duplicated_task_message_trains_once(
    owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    from datasets import services as file_services
    from datasets.processing import file_validate
    from jobs import services
    from jobs.services import JobRequest

    data = sms_subset(tmp_path, 16)
    file = file_services.file_create(
        organization=owner.org,
        uploaded_by=owner.user,
        filename="d.jsonl",
        purpose="fine-tune",
        content=data.read_bytes(),
    )
    file_validate(file_id=file.pk)
    job = services.job_create(
        organization=owner.org,
        created_by=owner.user,
        req=JobRequest(
            api="legacy", model="tiny-llama", training_file=file.public_id, n_epochs=1, batch_size=4
        ),
    )  # on_commit enqueued it once...
    tasks.run_training_job.delay(job.pk)  # ...and here it is again
    with celery_worker():
        wait_for(lambda: status_of(job.public_id) in FineTuneJob.FINISHED, 180)
        job.refresh_from_db()
    assert job.status == "succeeded"
    assert job.events.filter(message="Fine-tune started").count() == 1
    assert FineTunedModel.objects.filter(job=job).count() == 1
    assert job.attempts == 1
