"""In Chromium, with a real worker: pause and resume a job from its page, the checkpoint list
with "open in playground", and the compare view filled in by the worker while the page polls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jobs import services
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from tests.conftest import Persona, login, sms_subset, validated_upload
from tests.workers import celery_worker, purge_broker

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def upload(owner: Persona, path: Path) -> str:
    return validated_upload(owner, path.name, path.read_bytes())


def test_pause_resume_checkpoints_and_compare(
    page: Any, live_server: Any, owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    purge_broker()
    training = upload(owner, sms_subset(tmp_path, 16))
    validation = upload(owner, sms_subset(tmp_path, 8, name="valid.jsonl", split="valid"))

    def create(training: str = training, **hyper: Any) -> FineTuneJob:
        return services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api="current",
                model="tiny-llama",
                training_file=training,
                validation_file=validation,
                batch_size=4,
                **hyper,
            ),
        )

    login(page, live_server, owner.user.username)
    with celery_worker():
        short = create(n_epochs=3)
        page.goto(f"{live_server.url}{short.get_absolute_url()}")
        page.wait_for_selector("[data-testid=job-status] >> text=succeeded", timeout=120_000)
        rows = page.locator("[data-testid=checkpoint-table] tbody tr")
        assert rows.count() == 3
        short.refresh_from_db()
        assert f"{short.fine_tuned_model}:ckpt-step-12" in rows.nth(0).inner_text()

        page.click("[data-testid=compare-link]")
        page.click("button:has-text('Score all checkpoints')")
        page.wait_for_selector("[data-testid=comparison-status] >> text=succeeded", timeout=90_000)
        table = page.inner_text("[data-testid=comparison-table]").lower()
        assert "validation loss" in table and "token accuracy" in table
        assert page.locator("[data-testid=comparison-table] tbody tr").count() == 3

        page.click("[data-testid=comparison-table] tbody tr >> nth=0 >> text=Open in playground")
        page.wait_for_url("**/playground/**")
        assert page.input_value("#model-1") == f"{short.fine_tuned_model}:ckpt-step-4"

        # Thousands of steps: the tiny model trains fast, and a job that finished between two
        # of the page's 2-second polls would never show "running" after its resume.
        many = upload(owner, sms_subset(tmp_path, 400, name="many.jsonl"))
        long = create(many, n_epochs=40)
        page.goto(f"{live_server.url}{long.get_absolute_url()}")
        page.wait_for_selector("[data-testid=job-status] >> text=running", timeout=60_000)
        page.click("[data-testid=pause]")
        page.wait_for_selector("[data-testid=job-status] >> text=paused", timeout=60_000)
        page.wait_for_selector("[data-testid=paused-note]")
        assert page.locator("[data-testid=pause]").count() == 0
        page.click("[data-testid=resume]")
        page.wait_for_selector("[data-testid=job-status] >> text=running", timeout=60_000)
        assert "Resuming fine-tuning job" in page.inner_text("#events")
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("button:has-text('Cancel')")
        page.wait_for_selector("[data-testid=job-status] >> text=cancelled", timeout=30_000)
    long.refresh_from_db()
    assert (long.status, long.pauses) == ("cancelled", 1)
