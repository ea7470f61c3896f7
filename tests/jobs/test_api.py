"""Both job APIs' shapes, vocabularies, pagination and errors (no worker involved)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest

from jobs.models import FineTuneJob
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.factories import FileFactory


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


@pytest.fixture
def training(owner: Persona) -> Any:
    return FileFactory.create(organization=owner.org)


def post(client: Any, path: str, body: Any) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json")


def test_legacy_create_returns_a_pending_fine_tune_with_events(
    owner: Persona, training: Any
) -> None:
    body = post(
        owner.api(), "/v1/fine-tunes", {"training_file": training.public_id, "model": "ada"}
    ).json()

    assert body["object"] == "fine-tune" and body["status"] == "pending"
    assert body["hyperparams"]["batch_size"] is None  # resolved when the job starts
    assert body["hyperparams"]["prompt_loss_weight"] == 0.01
    assert body["training_files"][0]["id"] == training.public_id
    assert body["events"][0]["message"] == f"Created fine-tune: {body['id']}"
    assert set(body["events"][0]) == {"object", "created_at", "level", "message"}


def test_legacy_create_defaults_model_to_curie(owner: Persona, training: Any) -> None:
    body = post(owner.api(), "/v1/fine-tunes", {"training_file": training.public_id}).json()
    assert body["model"] == "curie"


def test_legacy_list_get_events_and_cancel(owner: Persona, training: Any) -> None:
    client = owner.api()
    job_id = post(client, "/v1/fine-tunes", {"training_file": training.public_id}).json()["id"]

    listing = client.get("/v1/fine-tunes").json()
    assert listing["object"] == "list" and "events" not in listing["data"][0]
    assert client.get(f"/v1/fine-tunes/{job_id}").json()["id"] == job_id
    # 0.28 sends no body and no Content-Type on cancel.
    cancelled = client.post(f"/v1/fine-tunes/{job_id}/cancel").json()
    assert cancelled["status"] == "cancelled"
    messages = [e["message"] for e in client.get(f"/v1/fine-tunes/{job_id}/events").json()["data"]]
    assert messages[-1] == "Fine-tune cancelled"
    assert_envelope(client.post(f"/v1/fine-tunes/{job_id}/cancel"), 400)


def test_current_create_with_method_and_auto_values(owner: Persona, training: Any) -> None:
    body = post(
        owner.api(),
        "/v1/fine_tuning/jobs",
        {
            "model": "SmolLM2-135M-Instruct",
            "training_file": training.public_id,
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            "seed": 42,
            "suffix": "sfx",
            "metadata": {"team": "nlp"},
            "integrations": [{"type": "wandb", "wandb": {"project": "p"}}],
        },
    ).json()

    assert body["object"] == "fine_tuning.job" and body["status"] == "queued"
    assert body["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    assert body["seed"] == 42 and body["metadata"] == {"team": "nlp"}
    assert body["result_files"] == [] and body["error"] is None


def test_current_create_refuses_reinforcement(owner: Persona, training: Any) -> None:
    response = post(
        owner.api(),
        "/v1/fine_tuning/jobs",
        {
            "model": "SmolLM2-135M-Instruct",
            "training_file": training.public_id,
            "method": {"type": "reinforcement"},
        },
    )
    error = assert_envelope(response, 400)
    assert error["param"] == "method.type" and "not supported yet" in error["message"]


def test_current_list_pages_with_after_and_has_more(owner: Persona, training: Any) -> None:
    client = owner.api()
    ids = [
        post(
            client, "/v1/fine_tuning/jobs", {"model": "ada", "training_file": training.public_id}
        ).json()["id"]
        for _ in range(3)
    ]
    first = client.get("/v1/fine_tuning/jobs?limit=2").json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"] is True
    rest = client.get(f"/v1/fine_tuning/jobs?limit=2&after={first['data'][-1]['id']}").json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["has_more"] is False


def test_current_events_newest_first_and_cancel_with_empty_json_body(
    owner: Persona, training: Any
) -> None:
    client = owner.api()
    job_id = post(
        client, "/v1/fine_tuning/jobs", {"model": "ada", "training_file": training.public_id}
    ).json()["id"]
    # The current SDK sends Content-Type: application/json with an empty body.
    assert (
        client.post(
            f"/v1/fine_tuning/jobs/{job_id}/cancel", "", content_type="application/json"
        ).status_code
        == 200
    )

    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()
    assert events["data"][0]["message"] == "Fine tuning process stopping due to job cancellation"
    assert events["data"][0]["object"] == "fine_tuning.job.event" and events["has_more"] is False
    checkpoints = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()
    assert checkpoints == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


def test_create_errors_are_400s_naming_the_param(owner: Persona, training: Any) -> None:
    client = owner.api()
    error = assert_envelope(
        post(client, "/v1/fine-tunes", {"training_file": training.public_id, "n_epochs": 99}), 400
    )
    assert error["param"] == "n_epochs"
    error = assert_envelope(post(client, "/v1/fine_tuning/jobs", {"model": "ada"}), 400)
    assert error["param"] == "training_file"
    assert_envelope(post(client, "/v1/fine-tunes", ["not", "an", "object"]), 400)
    bad_json = client.post("/v1/fine-tunes", "{nope", content_type="application/json")
    assert_envelope(bad_json, 400)
    assert not FineTuneJob.objects.exists()


def test_another_orgs_job_is_404(owner: Persona, outsider: Persona, training: Any) -> None:
    job_id = post(owner.api(), "/v1/fine-tunes", {"training_file": training.public_id}).json()["id"]
    theirs = outsider.api()

    for path in (
        f"/v1/fine-tunes/{job_id}",
        f"/v1/fine_tuning/jobs/{job_id}",
        f"/v1/fine_tuning/jobs/{job_id}/events",
    ):
        assert_envelope(theirs.get(path), 404)
    assert_envelope(theirs.post(f"/v1/fine-tunes/{job_id}/cancel"), 404)
    assert FineTuneJob.objects.get(public_id=job_id).status == "queued"


@pytest.mark.parametrize("path", ["/v1/fine-tunes", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"scaling_forecast": "yes"}, "scaling_forecast"),
        ({"scaling_forecast": True, "validation_file": None}, "validation_file"),
        # 8 examples: a quarter (2) can't fill one batch of 4.
        ({"scaling_forecast": True, "batch_size": 4}, "training_file"),
    ],
)
def test_scaling_forecast_errors_are_400s_naming_the_param(
    owner: Persona, training: Any, path: str, extra: dict[str, Any], param: str
) -> None:
    validation = FileFactory.create(organization=owner.org)
    body = {"model": "ada", "training_file": training.public_id}
    body["validation_file"] = validation.public_id
    if "batch_size" in extra and path.endswith("jobs"):
        body["hyperparameters"] = {"batch_size": extra.pop("batch_size")}
    body.update(extra)

    error = assert_envelope(post(owner.api(), path, body), 400)

    assert error["param"] == param
    assert not FineTuneJob.objects.exists()


@pytest.mark.parametrize("path", ["/v1/fine-tunes", "/v1/fine_tuning/jobs"])
def test_scaling_forecast_job_carries_the_flag_and_its_runs_link_back(
    owner: Persona, path: str
) -> None:
    client = owner.api()
    # The ¼ run must fill a batch of the auto batch size (8): 32 examples at least.
    training = FileFactory.create(
        organization=owner.org, stats={"examples": 40, "tokens": {"total": 1000}}
    )
    validation = FileFactory.create(organization=owner.org)
    body = post(
        client,
        path,
        {
            "model": "ada",
            "training_file": training.public_id,
            "validation_file": validation.public_id,
            "scaling_forecast": True,
        },
    ).json()

    assert body["scaling_forecast"] is True and body["forecast"] is None
    listing = client.get(path).json()["data"]
    runs = [j for j in listing if j["id"] != body["id"]]
    assert sorted(j["data_fraction"] for j in runs) == [0.25, 0.5]
    assert {j["parent_job"] for j in runs} == {body["id"]}
    assert all(j["scaling_forecast"] is False for j in runs)


def test_a_positive_class_the_data_lacks_is_a_400_naming_it(owner: Persona) -> None:
    """Issue #15 item 1: "spam" (no leading space) used to train and skip the metrics with a
    warning event; it is refused before any row is written. The current API
    (/v1/fine_tuning/jobs) has no classification options, as OpenAI's, so this is legacy only."""
    labelled = {"examples": 8, "labels": {" spam": 3, " ham": 5}}
    training = FileFactory.create(organization=owner.org, stats=labelled)
    validation = FileFactory.create(organization=owner.org, stats=labelled)
    body = {
        "model": "ada",
        "training_file": training.public_id,
        "validation_file": validation.public_id,
        "compute_classification_metrics": True,
        "classification_positive_class": "spam",
    }

    error = assert_envelope(post(owner.api(), "/v1/fine-tunes", body), 400)

    assert error["param"] == "classification_positive_class"
    assert '"spam"' in error["message"] and '" spam"' in error["message"]
    assert not FineTuneJob.objects.exists()
    created = post(
        owner.api(), "/v1/fine-tunes", {**body, "classification_positive_class": " spam"}
    )
    assert created.status_code == 200, created.json()


@pytest.mark.parametrize("path", ["/v1/fine-tunes", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize(
    ("value", "with_validation"),
    [("yes", True), (0, True), (101, True), (1.5, True), (True, False), (3, False)],
)
def test_early_stopping_errors_are_400s_naming_the_param(
    owner: Persona, training: Any, path: str, value: Any, with_validation: bool
) -> None:
    body = {"model": "ada", "training_file": training.public_id, "early_stopping": value}
    if with_validation:
        body["validation_file"] = FileFactory.create(organization=owner.org).public_id

    error = assert_envelope(post(owner.api(), path, body), 400)

    assert error["param"] == "early_stopping"
    assert not FineTuneJob.objects.exists()


@pytest.mark.parametrize("path", ["/v1/fine-tunes", "/v1/fine_tuning/jobs"])
@pytest.mark.parametrize(("value", "stored"), [(None, "auto"), (False, False), (3, 3)])
def test_early_stopping_is_stored_and_shown(
    owner: Persona, training: Any, path: str, value: Any, stored: Any
) -> None:
    body = {
        "model": "ada",
        "training_file": training.public_id,
        "validation_file": FileFactory.create(organization=owner.org).public_id,
    }
    if value is not None:
        body["early_stopping"] = value

    job = post(owner.api(), path, body).json()

    assert job["early_stopping"] == stored
    assert FineTuneJob.objects.get(public_id=job["id"]).early_stopping == stored
