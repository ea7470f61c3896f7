"""In Chromium: create a job from the form, watch events and charts appear without reloading,
cancel another job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datasets import services as file_services
from datasets.processing import file_validate
from jobs.models import FineTuneJob
from tests.conftest import Persona, login, sms_subset
from tests.workers import celery_worker, purge_broker

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_create_watch_and_cancel(
    page: Any, live_server: Any, owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    purge_broker()
    data = sms_subset(tmp_path, 32)
    file = file_services.file_create(
        organization=owner.org,
        uploaded_by=owner.user,
        filename="sms.jsonl",
        purpose="fine-tune",
        content=data.read_bytes(),
    )
    file_validate(file_id=file.pk)
    login(page, live_server, owner.user.username)

    with celery_worker():
        page.goto(f"{live_server.url}/jobs/new/")
        page.select_option("#id_model", "tiny-llama")
        page.select_option("#id_training_file", file.public_id)
        page.fill("#id_n_epochs", "2")
        page.fill("#id_batch_size", "4")
        page.wait_for_selector("#preflight >> text=tokens to train")
        page.click("text=Create fine-tune")
        page.wait_for_url("**/jobs/ftjob-*/")
        url = page.url

        # No reload from here on: HTMX polling brings the events, status and charts.
        page.wait_for_selector("#events >> text=Fine-tuning job started", timeout=120_000)
        page.wait_for_selector("[data-testid=job-status] >> text=succeeded", timeout=180_000)
        page.wait_for_selector("#charts .chart .main-svg", timeout=20_000)
        assert page.url == url
        assert "Loss" in page.inner_text("#charts")

        # Another job, cancelled from its page while it runs.
        page.goto(f"{live_server.url}/jobs/new/")
        page.select_option("#id_model", "tiny-llama")
        page.select_option("#id_training_file", file.public_id)
        page.fill("#id_n_epochs", "50")
        page.fill("#id_batch_size", "1")
        page.click("text=Create fine-tune")
        page.wait_for_selector("[data-testid=job-status] >> text=running", timeout=120_000)
        page.on("dialog", lambda dialog: dialog.accept())
        page.click("button:has-text('Cancel')")
        page.wait_for_selector("[data-testid=job-status] >> text=cancelled", timeout=30_000)
    assert FineTuneJob.objects.filter(status="cancelled").count() == 1
