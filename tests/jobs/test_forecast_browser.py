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
        organization=owner.org, stats={"examples": 160, "tokens": {"total": 3200}}
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
    # The case of issue 14: 160 SMS rows; a straight line in log2(n) called this curve flat.
    values = {1.0: 0.956, 0.5: 0.931, 0.25: 0.431}
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
    assert sentence.inner_text().startswith(
        "The curve still rises: doubling your data is expected to raise validation token "
        "accuracy from 95.6% to 98.8% (range 97.2%–99.5%)."
    )
    assert sentence.is_visible()
    # Four ticks on the log2 axis: the three measured sizes and the projection.
    ticks = page.locator("#forecast-chart-plot .xtick text").all_text_contents()
    assert ticks == ["40", "80", "160", "320"]
    # Markers: the three measured points and the projected star (with its range as error bar).
    assert page.locator("#forecast-chart-plot .scatterlayer .point").count() == 4
    assert page.locator("#forecast-chart-plot .scatterlayer .errorbar").count() == 1
    # The fit and the projection are lines; the leave-one-out range is a filled band.
    assert page.locator("#forecast-chart-plot .scatterlayer .js-line").count() >= 2
    assert page.locator("#forecast-chart-plot .scatterlayer .js-fill").count() >= 1
    legend = page.locator("#forecast-chart-plot .legendtext").all_text_contents()
    assert {"measured", "fitted curve", "projection", "range (leave one run out)"} <= set(legend)
    text = page.inner_text("#forecast")
    assert "validation token accuracy" in text and "measured value at 160 examples" in text
