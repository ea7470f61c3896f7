"""schemathesis fuzzes a live server against config/openapi.yaml: 0 server errors, and every
response conforms to the schema (issue #11's machine-checked guarantee).

The server holds real objects of the key's organization (a validated file, a job of each API,
a fine-tuned model of a tiny base model that really generates), and the fuzzer draws path ids
and job-creation fields from them half of the time, so it reaches the code behind the 404s. The run is bounded (examples per operation
and a time budget, ~60-90 s on a quiet 2-core machine); raise SCHEMATHESIS_EXAMPLES and
SCHEMATHESIS_MAX_SECONDS for a longer hunt (docs/security.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.urls import resolve

from jobs import services as job_services
from jobs.services import JobRequest
from models_app.models import FineTunedModel
from tests.conftest import Persona
from tests.factories import FileFactory

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "ignored_auth",
    ]
)
EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "15"))
MAX_SECONDS = int(os.environ.get("SCHEMATHESIS_MAX_SECONDS", "45"))


def _config(path: Path, *, files: list[str], jobs: list[str], models: list[str]) -> Path:
    def values(items: list[str]) -> str:
        return json.dumps(items)

    train = '{ "body.model" = { dictionary = "bases", probability = 0.5 }, '
    train += '"body.training_file" = { dictionary = "files", probability = 0.5 } }'
    path.write_text(
        f"""
[dictionaries.files]
values = {values(files)}
[dictionaries.jobs]
values = {values(jobs)}
[dictionaries.models]
values = {values(models)}
[dictionaries.bases]
values = ["tiny-llama"]

[parameters]
"path.file_id" = {{ dictionary = "files", probability = 0.5 }}
"path.job_id" = {{ dictionary = "jobs", probability = 0.5 }}
"path.model" = {{ dictionary = "models", probability = 0.5 }}
"path.engine" = {{ dictionary = "models", probability = 0.5 }}

[[operations]]
include-name = "POST /fine_tuning/jobs"
parameters = {train}

[[operations]]
include-name = "POST /fine-tunes"
parameters = {train}
"""
    )
    return path


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_api_fuzzer_finds_no_server_errors(
    live_server: Any, owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    # Import every view (torch and all) before the clock of the first request starts.
    resolve("/v1/completions")
    training = FileFactory.create(organization=owner.org)
    jobs = []
    with mock.patch("jobs.tasks.run_training_job.delay"):
        for api in ("legacy", "current"):
            req = JobRequest(api=api, model="tiny-llama", training_file=training.public_id)
            job = job_services.job_create(organization=owner.org, created_by=owner.user, req=req)
            jobs.append(job.public_id)
    fine_tune = FineTunedModel.objects.create(
        name="ft:tiny-llama:acme:fuzz:abc123",
        organization=owner.org,
        base=tiny_base,
        artifact_dir=str(tmp_path / "adapter"),
    )
    config = _config(
        tmp_path / "schemathesis.toml",
        files=[training.public_id],
        jobs=jobs,
        models=[fine_tune.name, tiny_base.name],
    )
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(config),
        "run",
        f"{live_server.url}/v1/openapi.json",
        "--header",
        f"Authorization: Bearer {owner.key}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(EXAMPLES),
        "--max-time",
        str(MAX_SECONDS),
        "--seed",
        os.environ.get("SCHEMATHESIS_SEED", "20261204"),
        "--workers",
        "1",
        "--request-timeout",
        "30",
    ]
    # Uploads and job creation enqueue work after commit: nothing here consumes it.
    with (
        mock.patch("datasets.tasks.validate_file.delay"),
        mock.patch("jobs.tasks.run_training_job.delay"),
    ):
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=MAX_SECONDS + 90,
            env={**os.environ, "NO_COLOR": "1"},
            cwd=tmp_path,
        )

    output = done.stdout + done.stderr
    if os.environ.get("SCHEMATHESIS_OUTPUT"):
        Path(os.environ["SCHEMATHESIS_OUTPUT"]).write_text(output)
    assert done.returncode == 0, output[-15000:]
