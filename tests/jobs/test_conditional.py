"""Polled endpoints answer an unchanged poll with a bodiless 304 (common.conditional)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from jobs import events
from jobs.models import FineTuneJob
from tests.conftest import Persona
from tests.jobs.test_views import browser_for, make_job


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


@pytest.mark.parametrize(
    "path",
    [
        "/v1/fine_tuning/jobs/{id}/events",
        "/v1/fine_tuning/jobs/{id}/events?limit=5",
        "/v1/fine-tunes/{id}/events",
    ],
)
def test_events_list_is_304_until_an_event_is_written(owner: Persona, path: str) -> None:
    job = make_job(owner)
    client = owner.api()
    url = path.format(id=job.public_id)

    first = client.get(url)
    etag = first["ETag"]
    assert first.status_code == 200 and first["Cache-Control"] == "private, no-cache"

    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again["ETag"] == etag

    events.emit(job, "started")
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert "started" in changed.content.decode()


def test_an_outsider_gets_404_not_304(owner: Persona, outsider: Persona) -> None:
    job = make_job(owner)
    etag = owner.api().get(f"/v1/fine_tuning/jobs/{job.public_id}/events")["ETag"]

    response = outsider.api().get(
        f"/v1/fine_tuning/jobs/{job.public_id}/events", headers={"If-None-Match": etag}
    )
    assert response.status_code == 404


def test_job_live_partial_is_304_until_the_job_changes(owner: Persona, member: Persona) -> None:
    job = make_job(owner)
    client = browser_for(owner)
    htmx = {"HX-Request": "true"}

    first = client.get(job.get_absolute_url(), headers=htmx)
    etag = first["ETag"]
    assert first.status_code == 200 and 'id="job-live"' in first.content.decode()
    assert (
        client.get(job.get_absolute_url(), headers={**htmx, "If-None-Match": etag}).status_code
        == 304
    )

    # Another viewer (their own CSRF token in the forms) never gets this one's version.
    other = browser_for(member).get(job.get_absolute_url(), headers={**htmx, "If-None-Match": etag})
    assert other.status_code == 200

    FineTuneJob.objects.filter(pk=job.pk).update(step=3)  # a step, written by .update()
    stepped = client.get(job.get_absolute_url(), headers={**htmx, "If-None-Match": etag})
    assert stepped.status_code == 200 and stepped["ETag"] != etag

    # The full page is never answered with the partial's version.
    full = client.get(job.get_absolute_url(), headers={"If-None-Match": stepped["ETag"]})
    assert full.status_code == 200 and "<html" in full.content.decode()
