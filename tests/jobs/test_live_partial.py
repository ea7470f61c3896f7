"""The job page's live partial is rendered once per version for all its pollers
(common.renders): the same HTML as a fresh render, each viewer's own CSRF token, never stale,
never another org's."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.core.cache import caches
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from common import renders
from jobs import events
from jobs.models import Checkpoint, FineTuneJob
from tests.conftest import Persona
from tests.jobs.test_views import browser_for, make_job

HTMX = {"HX-Request": "true"}
TOKEN = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    caches[renders.CACHE].clear()
    yield
    caches[renders.CACHE].clear()


def live(client: Client, job: FineTuneJob, **headers: str) -> str:
    response = client.get(job.get_absolute_url(), headers={**HTMX, **headers})
    assert response.status_code == 200
    return str(response.content.decode())


def set_running(job: FineTuneJob) -> None:
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", step=2, total_steps=10)


def tokens_out(html: str) -> str:
    return TOKEN.sub('name="csrfmiddlewaretoken" value="…"', html)


def test_a_cached_partial_is_a_fresh_render_with_the_viewers_token(
    owner: Persona, member: Persona
) -> None:
    job = make_job(owner)
    set_running(job)

    rendered = live(browser_for(owner), job)  # renders it
    with mock.patch("jobs.views._detail_context") as context:
        cached = live(browser_for(member), job)  # the same version: from the cache
    context.assert_not_called()
    caches[renders.CACHE].clear()
    fresh = live(browser_for(member), job)

    assert TOKEN.search(cached) and renders._csrf_placeholder() not in cached
    assert TOKEN.findall(cached) != TOKEN.findall(rendered)  # the member's own token
    assert tokens_out(cached) == tokens_out(rendered) == tokens_out(fresh)
    # What the full page shows in its place, rendered with the request (context processors).
    page = browser_for(member).get(job.get_absolute_url()).content.decode()
    assert tokens_out(cached).strip() in tokens_out(page)


def test_the_viewers_token_in_a_cached_partial_passes_the_csrf_check(
    owner: Persona, member: Persona
) -> None:
    job = make_job(owner)
    set_running(job)
    owners = Client(enforce_csrf_checks=True)
    owners.force_login(owner.user)
    members = Client(enforce_csrf_checks=True)
    members.force_login(member.user)
    owner_token = TOKEN.findall(live(owners, job))[0]

    member_token = TOKEN.findall(live(members, job))[0]  # from the cache

    cancel = f"/jobs/{job.public_id}/cancel/"
    assert members.post(cancel, {"csrfmiddlewaretoken": owner_token}).status_code == 403
    assert members.post(cancel, {"csrfmiddlewaretoken": member_token}).status_code == 302
    job.refresh_from_db()
    assert job.status == "cancelled"


def test_every_change_of_the_job_shows_on_the_next_poll(owner: Persona, member: Persona) -> None:
    job = make_job(owner)
    first, second = browser_for(owner), browser_for(member)
    live(first, job)

    events.emit(job, "started")  # a new event
    assert "Fine-tuning job started" in live(second, job)

    set_running(job)  # a step and a status, written by .update()
    running = live(first, job)
    assert 'data-testid="pause"' in running and "step 2 / 10" in running

    events.emit_metrics(job, step=3, total_steps=10, row={"training_loss": 0.4321})
    assert 'data-metric="training_loss"' in live(second, job)

    FineTuneJob.objects.filter(pk=job.pk).update(status="succeeded")
    final = live(first, job)
    assert ">succeeded</span>" in final and "hx-trigger" not in final


def test_another_org_gets_404_never_the_cached_partial(owner: Persona, outsider: Persona) -> None:
    job = make_job(owner)
    etag = browser_for(owner).get(job.get_absolute_url(), headers=HTMX)["ETag"]

    response = browser_for(outsider).get(
        job.get_absolute_url(), headers={**HTMX, "If-None-Match": etag}
    )

    assert response.status_code == 404
    assert job.public_id not in response.content.decode()
    assert browser_for(outsider).get(job.get_absolute_url(), headers=HTMX).status_code == 404


def test_a_cached_poll_costs_the_queries_of_a_304(
    owner: Persona, member: Persona, django_assert_num_queries: Any
) -> None:
    job = make_job(owner)
    set_running(job)
    owners, members = browser_for(owner), browser_for(member)
    etag = owners.get(job.get_absolute_url(), headers=HTMX)["ETag"]  # renders it
    members.get(job.get_absolute_url(), headers=HTMX)  # the member's session and CSRF cookie

    # session, user, memberships, the job row, its checkpoints, its events' version: the same
    # for an unchanged poll (304) and a cached render (200).
    with django_assert_num_queries(6):
        unchanged = owners.get(job.get_absolute_url(), headers={**HTMX, "If-None-Match": etag})
    with django_assert_num_queries(6):
        cached = members.get(job.get_absolute_url(), headers=HTMX)

    assert unchanged.status_code == 304 and cached.status_code == 200


def test_a_render_costs_the_same_queries_for_one_checkpoint_as_for_three(owner: Persona) -> None:
    job = make_job(owner)
    set_running(job)
    client = browser_for(owner)
    client.get(job.get_absolute_url(), headers=HTMX)  # the session's CSRF cookie
    counts = []
    for step in (4, 8, 12):
        Checkpoint.objects.create(job=job, step_number=step, epoch=step // 4, exposed=True)
        with CaptureQueriesContext(connection) as queries:
            html = live(client, job)  # a new version: rendered
        counts.append(len(queries))

    assert html.count('data-testid="checkpoint-prepare"') == 3
    assert counts[0] == counts[1] == counts[2], counts


@pytest.mark.parametrize(
    ("key", "title", "other"),
    [
        ("classification_accuracy", "Accuracy", "ROUGE-L"),
        ("generation_rouge_l", "ROUGE-L", "Accuracy"),
    ],
)
def test_checkpoints_show_their_whole_validation_set_scores_and_which_one_is_the_model(
    owner: Persona, key: str, title: str, other: str
) -> None:
    """With best-checkpoint selection each epoch's checkpoint was scored on the whole validation
    set and by what ranks it (accuracy for labelled data, the ROUGE-L of greedy generations for
    free text): the table shows those scores and marks the winner; a job without them keeps the
    plain columns."""
    job = make_job(owner)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="succeeded", final_metrics={"best_checkpoint_step": 8}
    )
    client = browser_for(owner)
    plain = client.get(job.get_absolute_url()).content.decode()
    for step, score in ((4, 0.61), (8, 0.88)):
        Checkpoint.objects.create(
            job=job,
            step_number=step,
            epoch=step // 4,
            exposed=True,
            metrics={"full_valid_loss": 1 / step, key: score},
        )

    html = client.get(job.get_absolute_url()).content.decode()

    assert "Full valid loss" not in plain and "Full valid loss" in html
    assert f">{title}<" in html and f">{other}<" not in html
    (best,) = re.findall(r'<tr data-testid="best-checkpoint">.*?</tr>', html, re.S)
    assert "<td>8</td>" in best and "final model" in best
    assert "<td>0.8800</td>" in best and "<td>0.1250</td>" in best  # its score and full loss
