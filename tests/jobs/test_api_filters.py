"""GET /v1/fine_tuning/jobs?metadata[...] is exact equality only, and `method` is type-checked
at every depth (issue #11: Access 2 and "No 500s")."""

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
def jobs(owner: Persona) -> dict[str, str]:
    """Three jobs: metadata {team: nlp}, {team: vision, run: a'b}, and none."""
    training = FileFactory.create(organization=owner.org)
    ids = {}
    for name, metadata in (
        ("nlp", {"team": "nlp"}),
        ("vision", {"team": "vision", "run": "a'b"}),
        ("none", None),
    ):
        body: dict[str, Any] = {
            "model": "SmolLM2-135M-Instruct",
            "training_file": training.public_id,
        }
        if metadata is not None:
            body["metadata"] = metadata
        response = post(owner, "/v1/fine_tuning/jobs", body)
        assert response.status_code == 200, response.content
        ids[name] = response.json()["id"]
    return ids


def post(persona: Persona, path: str, body: Any) -> Any:
    return persona.api().post(path, json.dumps(body), content_type="application/json")


def listed(persona: Persona, query: str) -> set[str]:
    response = persona.api().get(f"/v1/fine_tuning/jobs?{query}")
    assert response.status_code == 200, response.content
    return {job["id"] for job in response.json()["data"]}


def test_metadata_filter_is_exact_equality(owner: Persona, jobs: dict[str, str]) -> None:
    assert listed(owner, "metadata[team]=nlp") == {jobs["nlp"]}
    assert listed(owner, "metadata[team]=NLP") == set()
    assert listed(owner, "metadata[team]=nl") == set()
    assert listed(owner, "metadata[team]=vision&metadata[run]=a'b") == {jobs["vision"]}
    assert listed(owner, "metadata[team]=nlp&metadata[run]=a'b") == set()
    assert listed(owner, "metadata=null") == {jobs["none"]}
    assert listed(owner, "limit=10") == set(jobs.values())


@pytest.mark.parametrize(
    "query",
    [
        # The reproductions: a catastrophic regex run by the database, and a 500.
        "metadata[team__regex]=^(a%2B)%2B$",
        "metadata[team__contains]=x",
        "metadata[team__isnull]=true",
        "metadata[team__in]=nlp",
        "metadata[__class__]=x",
        # Malformed brackets and keys.
        "metadata[team",
        "metadata[team]]=x",
        "metadata[a][b]=x",
        "metadata[]=x",
        "metadata[" + "k" * 65 + "]=x",
        "metadataX=1",
        "metadata=nlp",
        "metadata=null&metadata[team]=nlp",
    ],
)
def test_anything_but_a_plain_metadata_key_is_a_400_naming_metadata(
    owner: Persona, jobs: dict[str, str], query: str
) -> None:
    response = owner.api().get(f"/v1/fine_tuning/jobs?{query}")

    assert assert_envelope(response, 400)["param"] == "metadata"


def test_metadata_keys_that_could_not_be_filtered_on_are_refused_at_creation(
    owner: Persona,
) -> None:
    training = FileFactory.create(organization=owner.org)
    body = {"model": "SmolLM2-135M-Instruct", "training_file": training.public_id}

    response = post(owner, "/v1/fine_tuning/jobs", {**body, "metadata": {"a__regex": "x"}})

    assert assert_envelope(response, 400)["param"] == "metadata"
    assert not FineTuneJob.objects.exists()


@pytest.mark.parametrize(
    ("method", "param"),
    [
        ("supervised", "method"),
        ([], "method"),
        ({"type": "supervised", "supervised": "x"}, "method.supervised"),
        ({"type": "supervised", "supervised": []}, "method.supervised"),
        ({"type": "supervised", "supervised": 3}, "method.supervised"),
        ({"type": ["supervised"]}, "method.type"),
        ({"type": None, "supervised": {}}, "method.type"),
        ({"type": "reinforcement"}, "method.type"),
        ({"type": "rlhf"}, "method.type"),
        ({"type": "supervised", "dpo": {}}, "method.dpo"),
        ({"type": "dpo", "dpo": []}, "method.dpo"),
        ({"type": "supervised", "typo": {}}, "method.typo"),
        ({"supervised": {"hyperparameters": "x"}}, "method.supervised.hyperparameters"),
        ({"supervised": {"hyperparameters": [1]}}, "method.supervised.hyperparameters"),
        ({"supervised": {"extra": 1}}, "method.supervised.extra"),
        (
            {"supervised": {"hyperparameters": {"n_epochs": {"a": 1}}}},
            "n_epochs",
        ),
        ({"supervised": {"hyperparameters": {"batch_size": [1]}}}, "batch_size"),
        (
            {"supervised": {"hyperparameters": {"learning_rate_multiplier": "x"}}},
            "learning_rate_multiplier",
        ),
        (
            {"supervised": {"hyperparameters": {"nope": 1}}},
            "method.supervised.hyperparameters.nope",
        ),
    ],
)
def test_a_wrong_type_anywhere_in_method_is_a_400_naming_it(
    owner: Persona, method: Any, param: str
) -> None:
    training = FileFactory.create(organization=owner.org)
    body = {"model": "SmolLM2-135M-Instruct", "training_file": training.public_id}

    response = post(owner, "/v1/fine_tuning/jobs", {**body, "method": method})

    assert assert_envelope(response, 400)["param"] == param
    assert not FineTuneJob.objects.exists()


def test_top_level_hyperparameters_must_be_an_object(owner: Persona) -> None:
    training = FileFactory.create(organization=owner.org)
    body = {"model": "SmolLM2-135M-Instruct", "training_file": training.public_id}

    response = post(owner, "/v1/fine_tuning/jobs", {**body, "hyperparameters": "x"})

    assert assert_envelope(response, 400)["param"] == "hyperparameters"
