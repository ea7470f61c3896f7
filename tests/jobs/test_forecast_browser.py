"""In Chromium: a finished forecast's chart and sentence render on the parent's job page.

The three runs are built directly (no training) for speed; tests/jobs/test_forecast_e2e.py trains
them for real."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from jobs import forecast, services
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from tests.conftest import Persona, login
from tests.factories import FileFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_forecast_chart_and_sentence_render(
    page: Any, live_server: Any, owner: Persona, tiny_base: Any
) -> None:
    training = FileFactory.create(
        organization=owner.org, stats={"examples": 1000, "tokens": {"total": 20000}}
    )
    validation = FileFactory.create(organization=owner.org, filename="valid.jsonl")
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api="current",
                model="tiny-llama",
                training_file=training.public_id,
                validation_file=validation.public_id,
                scaling_forecast=True,
            ),
        )
    values = {1.0: 0.80, 0.5: 0.75, 0.25: 0.70}
    for run in (job, *job.children.all()):
        FineTuneJob.objects.filter(pk=run.pk).update(
            status="succeeded",
            progress=1.0,
            final_metrics={"full_validation_token_accuracy": values[run.data_fraction]},
        )
    assert forecast.forecast_record(job=job) is not None
    login(page, live_server, owner.user.username)

    page.goto(f"{live_server.url}{job.get_absolute_url()}")

    page.wait_for_selector("#forecast-chart-plot .main-svg")
    sentence = page.locator("[data-testid=forecast-sentence]")
    assert sentence.inner_text() == (
        "Doubling your data is expected to raise accuracy from 80.0% to 85.0%."
    )
    assert sentence.is_visible()
    # Four ticks on the log2 axis: the three measured sizes and the projection.
    ticks = page.locator("#forecast-chart-plot .xtick text").all_text_contents()
    assert ticks == ["250", "500", "1000", "2000"]
    assert page.locator("#forecast-chart-plot .scatterlayer .point").count() == 4
    assert "validation token accuracy" in page.inner_text("#forecast")
