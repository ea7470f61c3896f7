"""No server path reaches an API client or a page (issue #11, Access 4): every place that turns
an exception into user-visible text goes through common.redact."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.test import Client

from common.errors import ServiceError
from common.redact import redact
from config.api import error_body
from datasets import processing, services
from jobs import events, runner
from jobs import services as job_services
from jobs import wandb as job_wandb
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from playground.protocol import error_chunk
from tests.conftest import Persona
from tests.factories import BaseModelFactory, FileFactory


def server_paths() -> list[str]:
    return [
        str(settings.DATA_DIR),
        str(settings.BASE_DIR),
        str(Path.home()),
        tempfile.gettempdir(),
        "/tmp/",
    ]


def assert_no_server_path(text: str) -> None:
    for path in server_paths():
        assert path not in text, f"{path} leaked in {text!r}"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # {data}, {app} and {home}: this process's roots (test ids must not depend on them:
        # every pytest-xdist worker has its own DATA_DIR).
        ("denied: '{data}/wandb/run-1'", "denied: '<data>/wandb/run-1'"),
        ("in {app}/engine/models.py", "in <app>/engine/models.py"),
        ("cannot open /tmp/abc/x.bin", "cannot open <tmp>/abc/x.bin"),
        ("{home}/.cache/hf", "<home>/.cache/hf"),
        # Not paths of this server: URLs, API routes, look-alikes.
        ("Invalid URL (GET /v1/files/x)", "Invalid URL (GET /v1/files/x)"),
        ("see http://host/tmp/x", "see http://host/tmp/x"),
        ("/tmpfoo/bar", "/tmpfoo/bar"),
    ],
)
def test_redact_replaces_server_roots_only(text: str, shown: str) -> None:
    roots = {"data": settings.DATA_DIR, "app": settings.BASE_DIR, "home": Path.home()}
    assert redact(text.format(**roots)) == shown


def make_job(owner: Persona, **base: Any) -> FineTuneJob:
    base_model = BaseModelFactory.create(**base) if base else None
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        return job_services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api="current",
                model=base_model.name if base_model else "ada",
                training_file=training.public_id,
            ),
        )


def test_an_engine_error_with_a_path_fails_the_job_without_showing_it(owner: Persona) -> None:
    # A real failure: the base model's directory doesn't exist (the engine names it).
    missing = Path(settings.DATA_DIR) / "no-such-model"
    job = make_job(owner, name="broken-base", source=str(missing))

    runner.job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == FineTuneJob.Status.FAILED
    api = owner.api()
    shown = json.dumps(api.get(f"/v1/fine_tuning/jobs/{job.public_id}").json())
    shown += json.dumps(api.get(f"/v1/fine_tuning/jobs/{job.public_id}/events").json())
    browser = Client()
    browser.force_login(owner.user)
    shown += browser.get(job.get_absolute_url()).content.decode()
    assert "<data>/no-such-model" in shown
    assert_no_server_path(shown)


def test_an_internal_error_message_is_redacted(owner: Persona) -> None:
    job = make_job(owner)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", attempts=1)

    runner._finish_failed(
        job,
        1,  # the attempt that owns the job
        f"internal error (OSError: [Errno 28] No space left: '{settings.DATA_DIR}/x')",
        code="internal_error",
    )

    job.refresh_from_db()
    assert job.error["message"].endswith("'<data>/x')")
    assert_no_server_path(json.dumps([e.message for e in job.events.all()]))


def test_a_wandb_warning_event_shows_no_path(owner: Persona) -> None:
    job = make_job(owner)
    error = PermissionError(13, "Permission denied", f"{settings.TUNERY_WANDB_DIR}/run")

    job_wandb.JobRun(job)._fail(error)
    events.emit(job, "engine", message=f"Loaded from {tempfile.gettempdir()}/cache")

    messages = [e.message for e in job.events.all()]
    assert any("Weights & Biases logging failed" in m for m in messages)
    assert_no_server_path(json.dumps(messages))


def test_dataset_read_errors_show_no_path(owner: Persona) -> None:
    file = FileFactory.create(organization=owner.org)
    os.remove(file.blob.path)  # the blob went missing: FileNotFoundError names its path

    findings = processing.findings_of(file)
    with pytest.raises(ServiceError) as fixing:
        services.file_apply_fixes(file=file, accepted=[], uploaded_by=owner.user)

    assert "Could not analyse" in findings["unavailable"]
    assert_no_server_path(findings["unavailable"])
    assert_no_server_path(fixing.value.message)


def test_every_v1_error_and_stream_error_is_redacted() -> None:
    text = f"could not read {settings.DATA_DIR}/models/1/x"

    body = error_body(text)
    chunk = error_chunk(ServiceError(text))

    assert body["error"]["message"] == "could not read <data>/models/1/x"
    assert chunk["error"]["message"] == "could not read <data>/models/1/x"
