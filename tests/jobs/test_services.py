"""job_create validation (each failure a 400 naming its param, no row left) and cancel."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest

from common.errors import ServiceError
from jobs import selectors, services
from jobs.models import FineTuneJob, JobEvent
from jobs.services import JobRequest
from tests.conftest import Persona
from tests.factories import FileFactory


@pytest.fixture
def training(owner: Persona) -> Any:
    return FileFactory.create(organization=owner.org)


def create(owner: Persona, **fields: Any) -> FineTuneJob:
    fields.setdefault("model", "SmolLM2-135M-Instruct")
    req = JobRequest(
        api=fields.pop("api", "legacy"), training_file=fields.pop("training_file"), **fields
    )
    with mock.patch("jobs.tasks.run_training_job.delay"):
        return services.job_create(organization=owner.org, created_by=owner.user, req=req)


def test_create_writes_the_job_and_its_first_events(
    owner: Persona, training: Any, django_capture_on_commit_callbacks: Any
) -> None:
    with (
        mock.patch("jobs.tasks.run_training_job.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="legacy", model="curie", training_file=training.public_id),
        )

    delay.assert_called_once_with(job.pk)
    assert job.public_id.startswith("ft-") and job.status == "queued"
    assert job.hyperparameters["prompt_loss_weight"] == 0.01
    messages = list(job.events.values_list("message", flat=True))
    assert messages == [
        f"Created fine-tune: {job.public_id}",
        "Fine-tune costs $0.00",
        "Fine-tune enqueued. Queue number: 0",
    ]


def test_current_api_ids_and_suffix_rules(owner: Persona, training: Any) -> None:
    job = create(owner, api="current", training_file=training.public_id, suffix="My Model:v2")
    assert job.public_id.startswith("ftjob-")
    assert job.suffix == "My-Model-v2"
    legacy = create(owner, training_file=training.public_id, suffix="My Model!")
    assert legacy.suffix == "my-model"


BAD_REQUESTS = [
    ({"model": None}, "model"),
    ({"training_file": "file-doesnotexist"}, "training_file"),
    ({"validation_file": "file-nope"}, "validation_file"),
    ({"n_epochs": 0}, "n_epochs"),
    ({"n_epochs": "four"}, "n_epochs"),
    ({"batch_size": 1000}, "batch_size"),
    ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
    ({"prompt_loss_weight": 2}, "prompt_loss_weight"),
    ({"suffix": "x" * 41}, "suffix"),
    ({"compute_classification_metrics": True}, "validation_file"),
    ({"seed": -5}, "seed"),
    ({"method": "qlora"}, "training_method"),
    ({"integrations": [{"type": "slack"}]}, "integrations.0.type"),
    ({"metadata": {"k": 1}}, "metadata"),
]


@pytest.mark.parametrize(("fields", "param"), BAD_REQUESTS)
def test_each_bad_request_names_its_param_and_leaves_no_row(
    owner: Persona, training: Any, fields: dict[str, Any], param: str
) -> None:
    fields = {"training_file": training.public_id, **fields}

    with pytest.raises(ServiceError) as raised:
        create(owner, **fields)

    assert raised.value.param == param
    assert raised.value.status_code in (400, 404)
    assert not FineTuneJob.objects.exists()
    assert not JobEvent.objects.exists()


def test_unknown_model_is_model_not_found(owner: Persona, training: Any) -> None:
    with pytest.raises(ServiceError) as raised:
        create(owner, model="gpt-9", training_file=training.public_id)
    assert raised.value.status_code == 404 and raised.value.code == "model_not_found"


def test_another_orgs_file_is_not_found(owner: Persona, outsider: Persona) -> None:
    theirs = FileFactory.create(organization=outsider.org)

    with pytest.raises(ServiceError, match="No such File object") as raised:
        create(owner, training_file=theirs.public_id)
    assert raised.value.param == "training_file"


@pytest.mark.parametrize(
    ("file_fields", "message"),
    [
        ({"status": "error", "error_count": 3}, "error"),
        ({"purpose": "fine-tune-results"}, "purpose"),
    ],
)
def test_unusable_files_are_refused(
    owner: Persona, file_fields: dict[str, Any], message: str
) -> None:
    bad = FileFactory.create(organization=owner.org, **file_fields)
    with pytest.raises(ServiceError, match=message):
        create(owner, training_file=bad.public_id)
    assert not FineTuneJob.objects.exists()


def test_classification_needs_a_class_setting(owner: Persona, training: Any) -> None:
    valid = FileFactory.create(organization=owner.org)
    with pytest.raises(ServiceError) as raised:
        create(
            owner,
            training_file=training.public_id,
            validation_file=valid.public_id,
            compute_classification_metrics=True,
        )
    assert raised.value.param == "classification_n_classes"
    job = create(
        owner,
        training_file=training.public_id,
        validation_file=valid.public_id,
        compute_classification_metrics=True,
        classification_positive_class=" spam",
        classification_betas=[1, 2],
    )
    assert job.classification["classification_positive_class"] == " spam"


def test_cancel_is_once_and_never_resurrects(owner: Persona, training: Any) -> None:
    job = create(owner, training_file=training.public_id)

    assert services.job_cancel(job=job) is True
    assert services.job_cancel(job=job) is False

    job.refresh_from_db()
    assert job.status == "cancelled"
    assert job.events.filter(message="Fine-tune cancelled").count() == 1


def test_queue_numbers_count_the_jobs_ahead(owner: Persona, training: Any) -> None:
    first = create(owner, training_file=training.public_id)
    second = create(owner, training_file=training.public_id)

    assert selectors.queue_position(first) == 0
    assert selectors.queue_position(second) == 1
    assert second.events.filter(message="Fine-tune enqueued. Queue number: 1").exists()
