"""A scaling forecast end to end: created through the API, its three runs trained one after the
other by a real Celery worker process on the tiny model, and the forecast stored at the end; and
the current SDK's call from the docs against a live server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from jobs.models import FineTuneJob
from models_app.models import FineTunedModel
from tests.conftest import Persona, sms_subset, validated_upload
from tests.factories import FileFactory
from tests.workers import celery_worker, purge_broker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def upload(owner: Persona, path: Path) -> str:
    return validated_upload(owner, path.name, path.read_bytes())


def test_forecast_trains_three_runs_and_stores_the_forecast(
    owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    purge_broker()
    training = upload(owner, sms_subset(tmp_path, 48))
    validation = upload(owner, sms_subset(tmp_path, 24, name="valid.jsonl", split="valid"))
    client = owner.api()

    response = client.post(
        "/v1/fine-tunes",
        json.dumps(
            {
                "model": "tiny-llama",
                "training_file": training,
                "validation_file": validation,
                "n_epochs": 1,
                "batch_size": 4,
                "compute_classification_metrics": True,
                "classification_positive_class": " spam",
                "scaling_forecast": True,
                "seed": 3,
            }
        ),
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    parent_id = response.json()["id"]

    with celery_worker():
        wait_for(
            lambda: FineTuneJob.objects.filter(
                public_id=parent_id, forecast__isnull=False
            ).exists(),
            300,
            what="the forecast",
        )

    parent = FineTuneJob.objects.get(public_id=parent_id)
    runs = [parent, *parent.children.order_by("data_fraction")]  # queue order: 1, ¼, ½
    assert [r.status for r in runs] == ["succeeded"] * 3, [r.error for r in runs]
    # The parent ran first (FIFO), and every run trained with the same hyperparameters.
    assert [r.started_at for r in runs] == sorted(r.started_at for r in runs)  # type: ignore[type-var]  # all started: they succeeded
    assert len({json.dumps(r.resolved_hyperparameters, sort_keys=True) for r in runs}) == 1
    # Only the parent is a model; the forecast runs keep their results files.
    assert list(FineTunedModel.objects.values_list("job_id", flat=True)) == [parent.pk]
    assert all(r.result_file_id for r in runs)

    forecast = parent.forecast
    assert forecast["status"] == "succeeded", forecast
    assert forecast["metric"] == "classification/accuracy"
    assert [p["examples"] for p in forecast["points"]] == [12, 24, 48]
    assert [p["job"] for p in forecast["points"]] == [r.public_id for r in (*runs[1:], parent)]
    assert forecast["projected"]["examples"] == 96
    assert 0.0 <= forecast["projected"]["value"] <= 1.0
    assert forecast["sentence"]
    body = client.get(f"/v1/fine-tunes/{parent_id}").json()
    assert body["forecast"] == forecast


def test_current_sdk_asks_for_a_forecast_with_extra_body(
    live_server: Any, owner: Persona, tiny_base: Any
) -> None:
    # The call docs/howto/scaling-forecast.md shows; no worker needed to see the runs queued.
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{live_server.url}/v1", api_key=owner.key, max_retries=0)
    train = FileFactory.create(organization=owner.org, stats={"examples": 100})
    valid = FileFactory.create(organization=owner.org, filename="valid.jsonl")

    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = client.fine_tuning.jobs.create(
            model="tiny-llama",
            training_file=train.public_id,
            validation_file=valid.public_id,
            extra_body={"scaling_forecast": True},
        )
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(
                model="tiny-llama",
                training_file=train.public_id,
                extra_body={"scaling_forecast": True},
            )

    assert job.model_extra["scaling_forecast"] is True and job.model_extra["forecast"] is None
    runs = FineTuneJob.objects.get(public_id=job.id).children.values_list(
        "data_fraction", flat=True
    )
    assert sorted(runs) == [0.25, 0.5]
    assert refused.value.body["param"] == "validation_file"
