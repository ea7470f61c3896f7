"""Job pages: list, create form with pre-flight, live fragment that stops polling, cancel."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.test import Client
from django.utils import timezone

from jobs import services
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from tests.conftest import Persona
from tests.factories import FileFactory


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


def browser_for(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def make_job(owner: Persona) -> FineTuneJob:
    training = FileFactory.create(organization=owner.org)
    return services.job_create(
        organization=owner.org,
        created_by=owner.user,
        req=JobRequest(api="current", model="ada", training_file=training.public_id),
    )


def test_create_form_offers_only_processed_files_and_creates_a_job(owner: Persona) -> None:
    good = FileFactory.create(organization=owner.org, filename="good.jsonl")
    FileFactory.create(
        organization=owner.org, filename="broken.jsonl", status="error", error_count=1
    )
    client = browser_for(owner)

    page = client.get("/jobs/new/").content.decode()
    assert "good.jsonl" in page and "broken.jsonl" not in page

    response = client.post(
        "/jobs/new/",
        {
            "model": "SmolLM2-135M-Instruct",
            "training_file": good.public_id,
            "training_method": "lora",
            "prompt_loss_weight": "0.01",
        },
    )
    job = FineTuneJob.objects.get()
    assert response.status_code == 302 and response["Location"] == job.get_absolute_url()
    assert job.public_id.startswith("ftjob-")


def test_create_form_shows_a_service_error_on_its_field(owner: Persona) -> None:
    good = FileFactory.create(organization=owner.org)
    response = browser_for(owner).post(
        "/jobs/new/",
        {
            "model": "SmolLM2-135M-Instruct",
            "training_file": good.public_id,
            "training_method": "lora",
            "compute_classification_metrics": "on",
        },
    )
    assert response.status_code == 200
    # In the form's words, not the API's field names (issue #15, item 8).
    assert "needs a “Validation file”" in response.content.decode()
    assert "validation_file to" not in response.content.decode()
    assert not FineTuneJob.objects.exists()


def preflight(owner: Persona, examples: int, **extra: str) -> str:
    """The create form's estimate for a file of `examples` examples and 40k tokens."""
    good = FileFactory.create(
        organization=owner.org, stats={"examples": examples, "tokens": {"total": 40000}}
    )
    return (
        browser_for(owner)
        .get(
            "/jobs/new/preflight/",
            {"model": "SmolLM2-135M-Instruct", "training_file": good.public_id, **extra},
            headers={"HX-Request": "true"},
        )
        .content.decode()
    )


def test_preflight_follows_the_auto_rule_setting(owner: Persona, settings: Any) -> None:
    settings.TUNERY_AUTO_HYPERPARAMETERS = "small"
    assert "120000" in preflight(owner, 1000)  # the small rule: 3 epochs (batch 16) x 40k tokens


def test_preflight_counts_the_epochs_a_selecting_job_gets(owner: Persona, settings: Any) -> None:
    # With a validation file the job keeps its best checkpoint, and the rule gives 500 examples
    # 6 epochs instead of 3 (engine.spec.SELECTING_MIN_EXAMPLES); the estimate says so.
    settings.TUNERY_AUTO_HYPERPARAMETERS = "small"
    settings.TUNERY_EARLY_STOPPING = "auto"
    validation = FileFactory.create(organization=owner.org).public_id
    assert "120000" in preflight(owner, 500)  # 3 epochs x 40k tokens
    selecting = preflight(owner, 500, validation_file=validation)
    assert "240000" in selecting and "the best epoch is kept" in selecting  # 6 epochs, and why
    settings.TUNERY_EARLY_STOPPING = "off"  # OpenAI's behaviour: no selection, no extra passes
    assert "120000" in preflight(owner, 500, validation_file=validation)


def test_preflight_shows_auto_values_and_an_estimate(owner: Persona, settings: Any) -> None:
    settings.TUNERY_AUTO_HYPERPARAMETERS = "openai"
    page = preflight(owner, 1000)
    assert "(auto)" in page and "160000" in page  # OpenAI's 4 epochs x 40k tokens

    with_forecast = preflight(owner, 1000, scaling_forecast="on")
    assert "280000" in with_forecast and "forecast" in with_forecast  # plus the 1/4 and 1/2 runs


def test_live_fragment_polls_until_finished(owner: Persona) -> None:
    job = make_job(owner)
    client = browser_for(owner)

    live = client.get(job.get_absolute_url(), headers={"HX-Request": "true"}).content.decode()
    assert 'id="job-live"' in live and "hx-trigger" in live and "<html" not in live

    services.job_cancel(job=job)
    final = client.get(job.get_absolute_url(), headers={"HX-Request": "true"}).content.decode()
    assert (
        "hx-trigger" not in final
        and "Fine tuning process stopping due to job cancellation" in final
    )


def test_cancel_from_the_page(owner: Persona) -> None:
    job = make_job(owner)
    browser_for(owner).post(f"/jobs/{job.public_id}/cancel/")
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_other_orgs_jobs_are_404(owner: Persona, outsider: Persona) -> None:
    job = make_job(owner)
    client = browser_for(outsider)
    assert client.get(job.get_absolute_url()).status_code == 404
    assert client.post(f"/jobs/{job.public_id}/cancel/").status_code == 404
    assert job.public_id not in client.get("/jobs/").content.decode()


def test_a_deleted_training_file_keeps_its_name_without_a_dead_link(owner: Persona) -> None:
    job = make_job(owner)
    File = type(job.training_file)
    File.objects.filter(pk=job.training_file_id).update(deleted_at=timezone.now())

    page = browser_for(owner).get(job.get_absolute_url()).content.decode()

    assert f'{job.training_file.filename}</span> <span class="muted">(deleted)' in page
    assert job.training_file.get_absolute_url() not in page
