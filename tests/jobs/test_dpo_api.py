"""`method` in the current API: DPO jobs, their hyperparameters and files, and each 400."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest

from jobs.models import FineTuneJob
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.factories import FileFactory

MODEL = "SmolLM2-135M-Instruct"


@pytest.fixture(autouse=True)
def no_queue() -> Any:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


@pytest.fixture
def pairs(owner: Persona) -> Any:
    return FileFactory.create(organization=owner.org, format="preference")


@pytest.fixture
def completions(owner: Persona) -> Any:
    return FileFactory.create(organization=owner.org)


def create(owner: Persona, body: dict[str, Any]) -> Any:
    return owner.api().post(
        "/v1/fine_tuning/jobs", json.dumps(body), content_type="application/json"
    )


def dpo(**hyperparameters: Any) -> dict[str, Any]:
    return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}


def test_a_dpo_job_stores_and_returns_its_method(owner: Persona, pairs: Any) -> None:
    response = create(
        owner,
        {"model": MODEL, "training_file": pairs.public_id, "method": dpo(beta=0.25, n_epochs=2)},
    )
    body = response.json()
    assert response.status_code == 200, body
    assert body["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {
                "n_epochs": 2,
                "batch_size": "auto",
                "learning_rate_multiplier": "auto",
                "beta": 0.25,
            }
        },
    }
    # The deprecated top level: the shared hyperparameters only.
    assert body["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
    }
    job = FineTuneJob.objects.get(public_id=body["id"])
    assert job.method_type == "dpo"
    assert job.hyperparameters == {
        "n_epochs": 2,
        "batch_size": None,
        "learning_rate_multiplier": None,
        "beta": 0.25,
    }
    assert owner.api().get(f"/v1/fine_tuning/jobs/{body['id']}").json()["method"] == body["method"]


def test_dpo_with_auto_beta_and_the_deprecated_top_level_hyperparameters(
    owner: Persona, pairs: Any
) -> None:
    body = create(
        owner,
        {
            "model": MODEL,
            "training_file": pairs.public_id,
            "method": {"type": "dpo"},
            "hyperparameters": {"batch_size": 4},
        },
    ).json()
    assert body["method"]["dpo"]["hyperparameters"]["beta"] == "auto"
    assert body["method"]["dpo"]["hyperparameters"]["batch_size"] == 4


def test_supervised_jobs_say_so(owner: Persona, completions: Any) -> None:
    body = create(owner, {"model": MODEL, "training_file": completions.public_id}).json()
    assert body["method"]["type"] == "supervised"
    assert set(body["method"]["supervised"]["hyperparameters"]) == {
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
    }


@pytest.mark.parametrize(
    ("method", "param"),
    [
        (dpo(beta=0), "method.dpo.hyperparameters.beta"),
        (dpo(beta=-1), "method.dpo.hyperparameters.beta"),
        (dpo(beta=11), "method.dpo.hyperparameters.beta"),
        (dpo(beta="high"), "method.dpo.hyperparameters.beta"),
        (dpo(beta=True), "method.dpo.hyperparameters.beta"),
        (dpo(prompt_loss_weight=0.1), "method.dpo.hyperparameters.prompt_loss_weight"),
        (dpo(n_epochs=0), "n_epochs"),
        ({"type": "dpo", "dpo": {"beta": 0.1}}, "method.dpo.beta"),
        ({"type": "dpo", "dpo": "x"}, "method.dpo"),
        ({"type": "dpo", "supervised": {}}, "method.supervised"),
        ({"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}, None),
        ({"type": "reinforcement", "reinforcement": {}}, "method.type"),
    ],
)
def test_bad_methods_are_400s_naming_the_param(
    owner: Persona, pairs: Any, completions: Any, method: Any, param: str | None
) -> None:
    training = completions if method.get("type") == "supervised" else pairs
    response = create(
        owner, {"model": MODEL, "training_file": training.public_id, "method": method}
    )
    expected = param or "method.supervised.hyperparameters.beta"
    assert assert_envelope(response, 400)["param"] == expected
    assert not FineTuneJob.objects.exists()


def test_dpo_needs_preference_data_and_preference_data_needs_dpo(
    owner: Persona, pairs: Any, completions: Any
) -> None:
    wrong = create(owner, {"model": MODEL, "training_file": completions.public_id, "method": dpo()})
    error = assert_envelope(wrong, 400)
    assert error["param"] == "training_file" and "preference data" in error["message"]

    supervised = create(owner, {"model": MODEL, "training_file": pairs.public_id})
    error = assert_envelope(supervised, 400)
    assert error["param"] == "training_file" and "'dpo'" in error["message"]

    validation = create(
        owner,
        {
            "model": MODEL,
            "training_file": pairs.public_id,
            "validation_file": completions.public_id,
            "method": dpo(),
        },
    )
    assert assert_envelope(validation, 400)["param"] == "validation_file"

    legacy = owner.api().post(
        "/v1/fine-tunes",
        json.dumps({"training_file": pairs.public_id}),
        content_type="application/json",
    )
    assert assert_envelope(legacy, 400)["param"] == "training_file"
    assert not FineTuneJob.objects.exists()


def test_dpo_refuses_classification_metrics_and_forecasts(owner: Persona, pairs: Any) -> None:
    base = {"model": MODEL, "training_file": pairs.public_id, "method": dpo()}
    forecast = create(owner, {**base, "validation_file": pairs.public_id, "scaling_forecast": True})
    assert assert_envelope(forecast, 400)["param"] == "scaling_forecast"
    assert not FineTuneJob.objects.exists()
