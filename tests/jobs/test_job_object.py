"""The current API's job object, events and lists, validated against the newest SDK's own types:
metadata (limits, exact-key filter), error, seed, integrations, pagination."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from jobs import events
from jobs.models import Checkpoint, FineTuneJob
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.factories import FileFactory

Status = FineTuneJob.Status


def create(persona: Persona, **body: Any) -> Any:
    training = FileFactory.create(organization=persona.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        return persona.api().post(
            "/v1/fine_tuning/jobs",
            json.dumps({"model": "ada", "training_file": training.public_id, **body}),
            content_type="application/json",
        )


def validated(body: dict[str, Any]) -> FineTuningJob:
    """Strict validation against the SDK's type; every required key must be present."""
    required = {n for n, f in FineTuningJob.model_fields.items() if f.is_required()}
    assert required <= set(body), required - set(body)
    if body["status"] in ("pausing", "paused"):  # not in the SDK's Literal yet (ADR 0009)
        body = {**body, "status": "running"}
    return FineTuningJob.model_validate(body)


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [
        ({f"k{i}": "v" for i in range(17)}, "at most 16 pairs, got 17"),
        ({"k" * 65: "v"}, "1 to 64 characters"),
        ({"k": "v" * 513}, "is 513 characters; values may be at most 512"),
        ({"k": 5}, "must be a string"),
        (["k", "v"], "must be an object"),
    ],
)
def test_metadata_out_of_bounds_is_a_400_naming_metadata(
    owner: Persona, metadata: Any, fragment: str
) -> None:
    error = assert_envelope(create(owner, metadata=metadata), 400)

    assert error["param"] == "metadata"
    assert fragment in error["message"]
    assert not FineTuneJob.objects.exists()


def test_metadata_limits_themselves_are_accepted(owner: Persona) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}

    body = create(owner, metadata=metadata).json()

    assert validated(body).metadata == metadata


def test_list_filters_metadata_by_exact_key_only(owner: Persona, outsider: Persona) -> None:
    nlp = create(owner, metadata={"team": "nlp", "a-b": "x"}).json()["id"]
    ops = create(owner, metadata={"team": "ops"}).json()["id"]
    bare = create(owner).json()["id"]
    create(outsider, metadata={"team": "nlp"})
    client = owner.api()

    def ids(query: str) -> list[str]:
        response = client.get(f"/v1/fine_tuning/jobs?{query}")
        assert response.status_code == 200, response.content
        return [j["id"] for j in response.json()["data"]]

    assert ids("metadata[team]=nlp") == [nlp]
    assert ids("metadata[team]=nlp&metadata[a-b]=x") == [nlp]
    assert ids("metadata[team]=NLP") == []
    assert ids("metadata[team]=") == []
    assert ids("metadata=null") == [bare]
    assert set(ids("")) == {nlp, ops, bare}
    # A key is a key, never a lookup: one that could read as a lookup or a JSON path is a 400
    # (no stored key can have that shape: the same rule refuses it at creation).
    for query in ("metadata[team__contains]=nl", "metadata[a][b]=x", "metadata=team"):
        error = assert_envelope(client.get(f"/v1/fine_tuning/jobs?{query}"), 400)
        assert error["param"] == "metadata"


def test_job_object_has_every_field_of_the_sdk_type(owner: Persona) -> None:
    body = create(
        owner,
        seed=42,
        suffix="my-model",
        metadata={"k": "v"},
        integrations=[{"type": "wandb", "wandb": {"project": "p", "tags": ["t"]}}],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    ).json()

    job = validated(body)

    assert (job.seed, job.error, job.trained_tokens, job.estimated_finish) == (42, None, None, None)
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    assert job.integrations[0].wandb.project == "p"
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert body["user_provided_suffix"] == "my-model"


def test_failed_paused_and_running_jobs_validate_too(owner: Persona) -> None:
    job_id = create(owner).json()["id"]
    job = FineTuneJob.objects.get(public_id=job_id)
    client = owner.api()

    FineTuneJob.objects.filter(pk=job.pk).update(
        status=Status.FAILED,
        error={"code": "training_error", "message": "bad data", "param": "training_file"},
    )
    failed = validated(client.get(f"/v1/fine_tuning/jobs/{job_id}").json())
    FineTuneJob.objects.filter(pk=job.pk).update(status=Status.PAUSED, error=None)
    paused = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()

    assert failed.error is not None and failed.error.param == "training_file"
    assert paused["status"] == "paused"
    validated(paused)


def test_events_and_checkpoints_validate_and_page(owner: Persona) -> None:
    job_id = create(owner).json()["id"]
    job = FineTuneJob.objects.get(public_id=job_id)
    events.emit_metrics(
        job, step=3, total_steps=9, row={"step": 3, "training_loss": 0.5, "validation_loss": 0.7}
    )
    for step in (3, 6, 9):
        Checkpoint.objects.create(
            job=job,
            step_number=step,
            epoch=step // 3,
            path="/nowhere",
            exposed=True,
            name=f"ft:x:acme::{job_id[-8:]}:ckpt-step-{step}",
            metrics={"train_loss": 0.5, "valid_loss": None},
        )
    Checkpoint.objects.create(job=job, step_number=4, path="/nowhere")  # not exposed
    client = owner.api()

    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=2").json()
    after = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?after={listed['data'][-1]['id']}")
    first = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints?limit=2").json()
    rest = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints?after={first['last_id']}").json()

    assert listed["has_more"] is True and after.json()["has_more"] is False
    parsed = [FineTuningJobEvent.model_validate(e) for e in listed["data"] + after.json()["data"]]
    metric = next(e for e in parsed if e.type == "metrics")
    assert metric.data["train_loss"] == 0.5 and metric.data["valid_loss"] == 0.7
    assert all(e.type in ("message", "metrics") for e in parsed)
    assert [c["step_number"] for c in first["data"] + rest["data"]] == [9, 6, 3]
    assert first["first_id"] == first["data"][0]["id"] and first["has_more"] is True
    assert rest["has_more"] is False and rest["first_id"] == rest["last_id"]
    for checkpoint in first["data"]:
        parsed_checkpoint = FineTuningJobCheckpoint.model_validate(checkpoint)
        assert set(checkpoint["metrics"]) == set(parsed_checkpoint.metrics.model_fields)
        assert parsed_checkpoint.fine_tuned_model_checkpoint.endswith(
            f":ckpt-step-{checkpoint['step_number']}"
        )


def test_job_list_pages_with_after_and_limit(
    owner: Persona, django_assert_max_num_queries: Any
) -> None:
    ids = [create(owner).json()["id"] for _ in range(3)]
    client = owner.api()

    first = client.get("/v1/fine_tuning/jobs?limit=2").json()
    rest = client.get(f"/v1/fine_tuning/jobs?limit=2&after={first['data'][-1]['id']}").json()
    with django_assert_max_num_queries(12):
        client.get("/v1/fine_tuning/jobs")

    assert [j["id"] for j in first["data"] + rest["data"]] == list(reversed(ids))
    assert (first["has_more"], rest["has_more"]) == (True, False)
    for body in first["data"]:
        validated(body)
