"""Query counts: every list endpoint and list page costs the same queries for 2 rows as for 10.

A list that issues a query per row (an N+1: `job.organization` in a serializer, a count per job)
passes every functional test and falls over at a real tenant's size. Each case here requests
the list once to warm what is cached per process (content types, the base-model registry),
counts the queries with 2 rows, adds 8 more and counts again: the two counts must be equal.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.invitations import invitation_create
from accounts.models import ApiKey, Membership, Organization, WebhookDelivery, WebhookEndpoint
from datasets.models import File
from jobs.models import Checkpoint, FineTuneJob, JobEvent
from models_app.models import BaseModel, FineTunedModel, ModelPermission, UsageRecord
from tests.conftest import Persona
from tests.factories import (
    BaseModelFactory,
    FileFactory,
    MembershipFactory,
    OrganizationFactory,
    UserFactory,
)

_seq = itertools.count()


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


def browser_for(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def _count(get: Callable[[], Any]) -> tuple[int, list[str]]:
    with CaptureQueriesContext(connection) as ctx:
        response = get()
    assert response.status_code == 200, response.content[:500]
    if hasattr(response, "streaming_content"):
        b"".join(response.streaming_content)
    return len(ctx.captured_queries), [q["sql"][:160] for q in ctx.captured_queries]


def assert_constant(get: Callable[[], Any], add_row: Callable[[], Any]) -> None:
    """Same number of queries for 2 rows as for 10 (after one warm-up request)."""
    for _ in range(2):
        add_row()
    get()
    small, _ = _count(get)
    for _ in range(8):
        add_row()
    large, queries = _count(get)
    assert large == small, f"{small} queries for 2 rows, {large} for 10: an N+1\n" + "\n".join(
        queries
    )


# --- rows --------------------------------------------------------------------------------------


def _base() -> BaseModel:
    # The migrations' default base model; a transactional test (live_server) may have flushed it.
    return BaseModelFactory.create(name="SmolLM2-135M-Instruct")


def make_file(owner: Persona) -> File:
    return FileFactory.create(organization=owner.org, uploaded_by=owner.user)


def make_job(
    owner: Persona, *, api: str = "current", with_parent: bool = True, **fields: Any
) -> FineTuneJob:
    """A finished job touching every relation the lists show: files, creator, result, parent."""
    n = next(_seq)
    training = make_file(owner)
    result = FileFactory.create(organization=owner.org, purpose="fine-tune-results")
    prefix = "ftjob-" if api == "current" else "ft-"
    parent = (
        None
        if not with_parent
        else FineTuneJob.objects.create(
            public_id=f"{prefix}parent{n}",
            api=api,
            organization=owner.org,
            created_by=owner.user,
            model="SmolLM2-135M-Instruct",
            base_model=_base(),
            training_file=training,
            seed=1,
            scaling_forecast=True,
            status="running",
        )
    )
    defaults: dict[str, Any] = {
        "public_id": f"{prefix}q{n}",
        "api": api,
        "organization": owner.org,
        "created_by": owner.user,
        "model": "SmolLM2-135M-Instruct",
        "base_model": _base(),
        "training_file": training,
        "validation_file": make_file(owner),
        "result_file": result,
        "seed": 1,
        "status": "succeeded",
        "fine_tuned_model": f"ft:SmolLM2-135M-Instruct:acme::q{n}",
        "metadata": {"team": "a"},
        "parent_job": parent,
        "data_fraction": 0.5,
        "started_at": timezone.now(),
        "finished_at": timezone.now(),
    }
    defaults.update(fields)
    return FineTuneJob.objects.create(**defaults)


def make_model(owner: Persona) -> FineTunedModel:
    job = make_job(owner)
    assert job.fine_tuned_model is not None  # make_job names one
    return FineTunedModel.objects.create(
        name=job.fine_tuned_model,
        organization=owner.org,
        base=job.base_model,
        job=job,
        artifact_dir=f"models/{job.public_id}",
    )


def make_checkpoint(job: FineTuneJob) -> Checkpoint:
    step = next(_seq) + 1
    return Checkpoint.objects.create(
        job=job,
        step_number=step,
        epoch=step,
        metrics={"train_loss": 1.0},
        path=f"jobs/{job.public_id}/checkpoints/step-{step}",
        name=f"{job.fine_tuned_model}:ckpt-step-{step}",
        exposed=True,
    )


def grant(
    org: Organization,
    grantee: Organization,
    *,
    model: FineTunedModel | None = None,
    checkpoint: Checkpoint | None = None,
) -> ModelPermission:
    return ModelPermission.objects.create(
        public_id=f"cp_q{next(_seq)}",
        organization=org,
        grantee=grantee,
        model_name=model.name if model else checkpoint.name,
        fine_tuned_model=model,
        checkpoint=checkpoint,
    )


def make_endpoint(owner: Persona) -> WebhookEndpoint:
    n = next(_seq)
    endpoint = WebhookEndpoint.objects.create(
        public_id=f"we_q{n}",
        organization=owner.org,
        name=f"hook {n}",
        url=f"https://hooks.example.com/{n}",
        event_types=["fine_tuning.job.succeeded"],
        secret=f"whsec_{n:030d}",
        updated_at=timezone.now(),
    )
    WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_type="fine_tuning.job.succeeded",
        event_id=f"evt_q{n}",
        payload="{}",
    )
    return endpoint


def make_usage(owner: Persona) -> UsageRecord:
    n = next(_seq)
    key = ApiKey.objects.filter(organization=owner.org).first()
    return UsageRecord.objects.create(
        organization=owner.org,
        model_name=f"model-{n}",
        api_key=key,
        user=owner.user,
        day=timezone.now().date() - timedelta(days=n % 20),
        requests=1,
        prompt_tokens=10,
        completion_tokens=5,
    )


# --- /v1 ---------------------------------------------------------------------------------------


def test_files_list(owner: Persona) -> None:
    api = owner.api()
    assert_constant(lambda: api.get("/v1/files"), lambda: make_file(owner))


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs?limit=100"])
def test_current_jobs_list(owner: Persona, path: str) -> None:
    api = owner.api()
    assert_constant(lambda: api.get(path), lambda: make_job(owner))


def test_legacy_jobs_list(owner: Persona) -> None:
    api = owner.api()
    assert_constant(lambda: api.get("/v1/fine-tunes"), lambda: make_job(owner, api="legacy"))


def test_legacy_job_detail_with_events(owner: Persona) -> None:
    job = make_job(owner, api="legacy")
    api = owner.api()
    assert_constant(
        lambda: api.get(f"/v1/fine-tunes/{job.public_id}"),
        lambda: JobEvent.objects.create(job=job, message="hello"),
    )


@pytest.mark.parametrize("api_name", ["current", "legacy"])
def test_job_events(owner: Persona, api_name: str) -> None:
    job = make_job(owner, api=api_name)
    path = (
        f"/v1/fine_tuning/jobs/{job.public_id}/events?limit=100"
        if api_name == "current"
        else f"/v1/fine-tunes/{job.public_id}/events"
    )
    api = owner.api()
    assert_constant(lambda: api.get(path), lambda: JobEvent.objects.create(job=job, message="step"))


def test_job_checkpoints(owner: Persona) -> None:
    job = make_job(owner)
    api = owner.api()
    assert_constant(
        lambda: api.get(f"/v1/fine_tuning/jobs/{job.public_id}/checkpoints?limit=100"),
        lambda: make_checkpoint(job),
    )


def test_models_list_with_checkpoints_and_shared_models(owner: Persona) -> None:
    other = OrganizationFactory.create()
    other_owner = Persona(user=UserFactory.create(), org=other, key="")

    def add() -> None:
        model = make_model(owner)
        make_checkpoint(model.job)  # type: ignore[arg-type]  # make_model always sets a job
        shared = make_model(other_owner)
        grant(other, owner.org, model=shared)

    api = owner.api()
    assert_constant(lambda: api.get("/v1/models"), add)


def test_checkpoint_permissions_list(owner: Persona) -> None:
    job = make_job(owner)
    checkpoint = make_checkpoint(job)
    api = owner.api()

    def add() -> None:
        grant(owner.org, OrganizationFactory.create(), checkpoint=checkpoint)

    assert_constant(
        lambda: api.get(f"/v1/fine_tuning/checkpoints/{checkpoint.name}/permissions"), add
    )


def test_webhook_endpoints_list(owner: Persona) -> None:
    api = owner.api()
    assert_constant(lambda: api.get("/v1/webhook_endpoints"), lambda: make_endpoint(owner))


# --- pages -------------------------------------------------------------------------------------


def test_datasets_page(owner: Persona) -> None:
    client = browser_for(owner)
    assert_constant(lambda: client.get("/datasets/"), lambda: make_file(owner))


def test_jobs_page(owner: Persona) -> None:
    client = browser_for(owner)
    assert_constant(lambda: client.get("/jobs/"), lambda: make_job(owner))


def test_models_page(owner: Persona) -> None:
    client = browser_for(owner)
    assert_constant(lambda: client.get("/models/"), lambda: make_model(owner))


def test_dashboard(owner: Persona) -> None:
    client = browser_for(owner)

    def add() -> None:
        make_model(owner)
        make_job(owner, status="running", progress=0.5)

    assert_constant(lambda: client.get("/"), add)


def test_usage_page(owner: Persona) -> None:
    client = browser_for(owner)
    assert_constant(lambda: client.get("/usage/"), lambda: make_usage(owner))


def test_settings_page(owner: Persona) -> None:
    client = browser_for(owner)
    from accounts import services

    def add() -> None:
        user = UserFactory.create()
        MembershipFactory.create(user=user, organization=owner.org)
        services.api_key_create(organization=owner.org, name="k", created_by=user)
        invitation_create(organization=owner.org, created_by=user, email="", role="member")
        make_endpoint(owner)

    assert_constant(lambda: client.get("/settings/"), add)


# --- admin changelists -------------------------------------------------------------------------


def _admin_rows(owner: Persona) -> None:
    model = make_model(owner)
    make_checkpoint(model.job)  # type: ignore[arg-type]  # make_model always sets a job
    JobEvent.objects.create(job=model.job, message="x")  # type: ignore[misc]  # job is set
    make_endpoint(owner)
    make_usage(owner)
    user = UserFactory.create()
    MembershipFactory.create(user=user, organization=owner.org)
    from accounts import services

    services.api_key_create(organization=owner.org, name="k", created_by=user)
    invitation_create(organization=owner.org, created_by=user, email="", role="member")
    grant(owner.org, OrganizationFactory.create(), model=model)
    from jobs import fleet

    fleet.worker_announce(
        name=f"training@host-{UserFactory.create().pk}",
        queues=["training"],
        info={"kind": "cpu", "count": 2, "memory_gib": 8.0, "names": []},
        device_class="cpu",
    )


ADMIN_PAGES = [
    "accounts/organization",
    "accounts/membership",
    "accounts/apikey",
    "accounts/invitation",
    "accounts/webhookendpoint",
    "accounts/webhookdelivery",
    "datasets/file",
    "jobs/finetunejob",
    "jobs/trainingworker",
    "models_app/finetunedmodel",
    "models_app/modelpermission",
]


@pytest.mark.parametrize("page", ADMIN_PAGES)
@pytest.mark.parametrize("who", ["superuser", "owner"])
def test_admin_changelist(owner: Persona, page: str, who: str) -> None:
    if who == "superuser":
        user = User.objects.create_superuser("root", "root@example.com", "pw")
    else:
        user = owner.user
        User.objects.filter(pk=user.pk).update(is_staff=True)
        assert Membership.objects.filter(user=user, role="owner").exists()
    client = Client()
    client.force_login(user)
    assert_constant(lambda: client.get(f"/admin/{page}/"), lambda: _admin_rows(owner))


# --- the legacy list pages ---------------------------------------------------------------------


def test_legacy_list_pages_oldest_first_with_limit_and_after(owner: Persona) -> None:
    ids = [make_job(owner, api="legacy", with_parent=False).public_id for _ in range(5)]
    api = owner.api()

    first = api.get("/v1/fine-tunes?limit=2").json()
    assert [j["id"] for j in first["data"]] == ids[:2] and first["has_more"] is True
    rest = api.get(f"/v1/fine-tunes?limit=10&after={ids[1]}").json()
    assert [j["id"] for j in rest["data"]] == ids[2:] and rest["has_more"] is False
    # Without `limit` (the 0.28 CLI): the default page holds them all.
    assert [j["id"] for j in api.get("/v1/fine-tunes").json()["data"]] == ids


@pytest.mark.parametrize(
    ("query", "param"),
    [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=x", "limit"), ("after=ft-no", "after")],
)
def test_legacy_list_rejects_bad_paging_naming_the_param(
    owner: Persona, query: str, param: str
) -> None:
    response = owner.api().get(f"/v1/fine-tunes?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_legacy_list_default_page_is_bounded(owner: Persona) -> None:
    from jobs import api as jobs_api

    for _ in range(3):
        make_job(owner, api="legacy", with_parent=False)
    with mock.patch.object(jobs_api, "LEGACY_LIST_LIMIT", 2):
        body = owner.api().get("/v1/fine-tunes").json()
    assert len(body["data"]) == 2 and body["has_more"] is True


def test_028_cli_lists_fine_tunes(live_server: Any, owner: Persona) -> None:
    from tests.jobs.test_e2e import run_028

    ids = [make_job(owner, api="legacy", with_parent=False).public_id for _ in range(3)]
    listing = run_028(live_server, owner.key, "api", "fine_tunes.list", timeout=120)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    for job_id in ids:
        assert job_id in listing.stdout


# --- starting a job ----------------------------------------------------------------------------


def test_a_job_start_announces_the_queue_in_constant_queries(owner: Persona) -> None:
    """Every queued job hears its new position: one read and one INSERT, not a count each."""
    from jobs import runner

    queued: list[FineTuneJob] = []

    def add() -> None:
        queued.append(make_job(owner, with_parent=False, status="queued", finished_at=None))

    for _ in range(2):
        add()
    with CaptureQueriesContext(connection) as small:
        runner._announce_queue_moved()
    for _ in range(8):
        add()
    JobEvent.objects.all().delete()
    with CaptureQueriesContext(connection) as large:
        runner._announce_queue_moved()
    assert len(large) == len(small) <= 2
    for position, job in enumerate(queued):
        (event,) = JobEvent.objects.filter(job=job)
        assert event.message == f"Job is in the queue. Queue number: {position}"
        assert event.public_id.startswith("ftevent-")
