"""The data-scaling forecast: the math, the child runs job_create queues, cancel, and the forecast
stored when the last run finishes (no worker; tests/jobs/test_forecast_e2e.py trains for real)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from django.test import Client

import engine
from jobs import forecast, runner, services
from jobs.forecast import FLAT_SENTENCE, Point, fit_log2, forecast_from_points
from jobs.models import FineTuneJob
from jobs.selectors import queue_position
from jobs.services import JobRequest
from models_app.models import FineTunedModel
from tests.conftest import Persona
from tests.factories import FileFactory

# --- the math -------------------------------------------------------------------------------


def points(*values: float, n: int = 400) -> list[Point]:
    sizes = [n // 4, n // 2, n]
    return [
        Point(fraction=s / n, examples=s, value=v, job=f"ftjob-{i}")
        for i, (s, v) in enumerate(zip(sizes, values, strict=True))
    ]


def test_fit_log2_recovers_a_straight_line_in_log2_n() -> None:
    intercept, slope = fit_log2([(100, 0.70), (200, 0.75), (400, 0.80)])

    assert slope == pytest.approx(0.05)  # +5 points per doubling
    assert intercept + slope * math.log2(800) == pytest.approx(0.85)


def test_fit_log2_is_least_squares() -> None:
    data = [(250, 0.71), (500, 0.78), (1000, 0.80)]

    intercept, slope = fit_log2(data)

    expected_slope, expected_intercept = np.polyfit(
        [math.log2(n) for n, _ in data], [0.71, 0.78, 0.80], 1
    )
    assert (intercept, slope) == pytest.approx((expected_intercept, expected_slope))


def test_fit_log2_needs_two_sizes() -> None:
    with pytest.raises(ValueError, match="two different sizes"):
        fit_log2([(100, 0.5), (100, 0.6)])


def test_forecast_projects_to_twice_the_data_and_says_so() -> None:
    result = forecast_from_points(
        points(0.70, 0.75, 0.80), metric="classification/accuracy", label="classification accuracy"
    )

    assert result["status"] == "succeeded" and result["flat"] is False
    assert result["current"] == {"examples": 400, "value": pytest.approx(0.80)}
    assert result["projected"] == {"examples": 800, "value": pytest.approx(0.85)}
    assert result["sentence"] == (
        "Doubling your data is expected to raise accuracy from 80.0% to 85.0%."
    )
    assert [p["examples"] for p in result["points"]] == [100, 200, 400]


@pytest.mark.parametrize(
    "values",
    [
        (0.900, 0.902, 0.904),  # +0.2 points per doubling: within the noise
        (0.92, 0.90, 0.88),  # more data did worse
    ],
)
def test_forecast_below_the_threshold_is_flat(values: tuple[float, float, float]) -> None:
    result = forecast_from_points(points(*values), metric="m", label="accuracy")

    assert result["flat"] is True
    assert result["sentence"] == FLAT_SENTENCE
    assert forecast.FLAT_GAIN == 0.005


def test_forecast_never_projects_past_100_percent() -> None:
    result = forecast_from_points(points(0.90, 0.95, 0.99), metric="m", label="accuracy")

    assert result["projected"]["value"] == 1.0
    assert result["sentence"].endswith("to 100.0%.")


# --- create, cancel, record -----------------------------------------------------------------


@pytest.fixture
def files(owner: Persona) -> tuple[Any, Any]:
    stats = {"examples": 1000, "tokens": {"total": 20000}}
    training = FileFactory.create(organization=owner.org, stats=stats)
    return training, FileFactory.create(organization=owner.org, filename="valid.jsonl")


def create(owner: Persona, files: tuple[Any, Any], **fields: Any) -> FineTuneJob:
    training, validation = files
    fields.setdefault("api", "current")
    fields.setdefault("model", "SmolLM2-135M-Instruct")
    req = JobRequest(
        training_file=training.public_id,
        validation_file=validation.public_id,
        scaling_forecast=True,
        **fields,
    )
    return services.job_create(organization=owner.org, created_by=owner.user, req=req)


def test_create_queues_two_runs_after_the_parent_with_the_same_settings(
    owner: Persona, files: tuple[Any, Any], django_capture_on_commit_callbacks: Any
) -> None:
    with (
        mock.patch("jobs.tasks.run_training_job.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        job = create(
            owner,
            files,
            seed=11,
            n_epochs=2,
            compute_classification_metrics=True,
            classification_positive_class=" spam",
            integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
            metadata={"team": "nlp"},
        )

    children = list(job.children.order_by("data_fraction"))
    assert [c.data_fraction for c in children] == [0.25, 0.5]
    # Queued right after the parent, but only the parent's message is sent now: the runs' go
    # out when it leaves the queue, so no broker can start them first.
    assert [call.args[0] for call in delay.call_args_list] == [job.pk]
    assert [c.status for c in children] == ["queued", "queued"]
    assert [queue_position(c) for c in children] == [1, 2]
    with (
        mock.patch("jobs.tasks.run_training_job.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        services.forecast_runs_dispatch(job)
    assert [call.args[0] for call in delay.call_args_list] == [c.pk for c in children]
    # Resolved once from all 1000 examples: batch 2 (0.2%), lr multiplier 0.05.
    fixed = {"n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 0.05}
    assert job.resolved_hyperparameters == {**fixed, "prompt_loss_weight": 0.01}
    for child in children:
        assert child.hyperparameters == {**fixed, "prompt_loss_weight": 0.01}
        assert child.seed == 11 and child.validation_file_id == job.validation_file_id
        assert child.training_file_id == job.training_file_id
        assert child.classification == job.classification
        assert child.public_id.startswith("ftjob-") and child.status == "queued"
        assert child.integrations == [] and child.metadata is None
        assert not child.scaling_forecast
    assert job.scaling_forecast and job.forecast is None
    assert "Scaling-forecast run for" in children[0].events.all()[1].message


def test_create_before_validation_defers_the_resolution_to_the_runner(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    training, _ = files
    training.status, training.stats = "uploaded", {}
    training.save()

    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)

    assert job.children.count() == 2
    assert job.children.first().hyperparameters["batch_size"] is None


def test_child_run_spec_trains_on_its_share_and_measures_the_whole_validation_file(
    owner: Persona, files: tuple[Any, Any], tmp_path: Path
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    child = job.children.get(data_fraction=0.25)

    spec = runner._spec(child, tmp_path, resume=False)

    assert spec.data_fraction == 0.25 and spec.final_full_validation
    assert spec.batch_size == 2 and spec.seed == job.seed
    assert runner._spec(job, tmp_path, resume=False).final_full_validation


def test_cancelling_the_parent_cancels_its_unfinished_runs(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    quarter, half = job.children.order_by("data_fraction")
    FineTuneJob.objects.filter(pk=quarter.pk).update(status="succeeded")

    assert services.job_cancel(job=job) is True

    statuses = dict(job.children.values_list("data_fraction", "status"))
    assert job.status == "cancelled" and statuses == {0.25: "succeeded", 0.5: "cancelled"}
    assert half.events.last().message == "Fine tuning process stopping due to job cancellation"
    assert job.forecast["status"] == "cancelled"
    assert "the full-data run" in job.forecast["message"]


def test_cancelling_a_finished_parent_stops_its_forecast(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    FineTuneJob.objects.filter(pk=job.pk).update(status="succeeded")
    job.refresh_from_db()

    assert services.job_cancel(job=job) is True

    job.refresh_from_db()
    assert job.status == "succeeded"
    assert set(job.children.values_list("status", flat=True)) == {"cancelled"}
    assert services.job_cancel(job=job) is False  # nothing left to cancel


def finish(job: FineTuneJob, value: float | None, status: str = "succeeded") -> None:
    metrics = {} if value is None else {"full_validation_token_accuracy": value}
    error = {"code": "training_error", "message": "out of memory"} if status == "failed" else None
    FineTuneJob.objects.filter(pk=job.pk).update(status=status, final_metrics=metrics, error=error)


def test_the_last_run_to_finish_stores_the_forecast(owner: Persona, files: tuple[Any, Any]) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    quarter, half = job.children.order_by("data_fraction")
    finish(job, 0.80)
    finish(quarter, 0.70)

    assert forecast.forecast_record(job=quarter) is None  # the ½ run is still queued
    finish(half, 0.75)
    result = forecast.forecast_record(job=half)

    job.refresh_from_db()
    assert job.forecast == result
    assert result["metric"] == "full_validation_token_accuracy"
    assert [(p["examples"], p["value"]) for p in result["points"]] == [
        (250, 0.70),
        (500, 0.75),
        (1000, 0.80),
    ]
    assert result["projected"]["examples"] == 2000
    assert result["sentence"].startswith("Doubling your data is expected to raise accuracy")


def test_a_failed_run_makes_the_forecast_say_so(owner: Persona, files: tuple[Any, Any]) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    quarter, half = job.children.order_by("data_fraction")
    finish(job, 0.80)
    finish(quarter, None, status="failed")
    finish(half, 0.75)

    result = forecast.forecast_record(job=half)

    assert result is not None and result["status"] == "failed"
    assert result["message"] == (
        f"No forecast: the 25%-data run ({quarter.public_id}) failed: out of memory."
    )


def test_a_run_without_the_metric_makes_the_forecast_say_so(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    for run in (job, *job.children.all()):
        finish(run, 0.8)
    FineTuneJob.objects.filter(pk=job.pk).update(final_metrics={"step": 3})

    result = forecast.forecast_record(job=job)

    assert result is not None and result["status"] == "failed"
    assert "recorded no validation token accuracy" in result["message"]


def test_a_finished_forecast_run_keeps_its_results_but_registers_no_model(
    owner: Persona, files: tuple[Any, Any], tmp_path: Path
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    child = job.children.get(data_fraction=0.5)
    FineTuneJob.objects.filter(pk=child.pk).update(status="running")
    (tmp_path / "model").mkdir()
    (tmp_path / "results.csv").write_text("step,training_loss\n1,0.5\n")
    result = engine.TrainResult(
        status="succeeded",
        output_dir=str(tmp_path),
        model_dir=str(tmp_path / "model"),
        results_csv=str(tmp_path / "results.csv"),
        trained_tokens=10,
        steps=1,
        hyperparameters={"n_epochs": 1},
        final_metrics={"full_validation_token_accuracy": 0.5, "validation_loss": math.nan},
        checkpoints=[],
    )

    runner._finish_succeeded(child, result)

    child.refresh_from_db()
    assert child.status == "succeeded" and child.result_file is not None
    assert child.fine_tuned_model is None
    assert child.final_metrics == {"full_validation_token_accuracy": 0.5, "validation_loss": None}
    assert not FineTunedModel.objects.filter(job=child).exists()
    assert not child.events.filter(message__startswith="New fine-tuned model").exists()


# --- pages ----------------------------------------------------------------------------------


def browser_for(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def test_create_form_checkbox_makes_a_forecast_and_errors_name_the_field(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    training, validation = files
    client = browser_for(owner)
    form = {
        "model": "SmolLM2-135M-Instruct",
        "training_file": training.public_id,
        "training_method": "lora",
        "scaling_forecast": "on",
    }
    assert "Data-scaling forecast" in client.get("/jobs/new/").content.decode()

    with mock.patch("jobs.tasks.run_training_job.delay"):
        refused = client.post("/jobs/new/", form)
        created = client.post("/jobs/new/", {**form, "validation_file": validation.public_id})

    assert refused.status_code == 200
    assert "needs a validation_file" in refused.context["form"].errors["validation_file"][0]
    job = FineTuneJob.objects.get(scaling_forecast=True)
    assert created["Location"] == job.get_absolute_url() and job.children.count() == 2


def test_finished_parent_keeps_polling_while_its_runs_train(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    quarter, half = job.children.order_by("data_fraction")
    finish(job, 0.8)
    FineTuneJob.objects.filter(pk=quarter.pk).update(status="running", progress=0.4)
    client = browser_for(owner)

    page = client.get(job.get_absolute_url(), headers={"HX-Request": "true"}).content.decode()

    assert "hx-trigger" in page  # still polling: the forecast isn't there yet
    assert quarter.public_id in page and half.public_id in page
    assert "Stop the forecast" in page
    child_page = client.get(quarter.get_absolute_url()).content.decode()
    assert 'data-testid="forecast-parent"' in child_page and job.public_id in child_page
    listing = client.get("/jobs/").content.decode()
    assert listing.count(f'of <a class="mono" href="{job.get_absolute_url()}"') == 2


def test_failed_forecast_page_says_why_and_stops_polling(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    quarter, half = job.children.order_by("data_fraction")
    finish(job, 0.8)
    finish(quarter, None, status="failed")
    finish(half, 0.75)
    forecast.forecast_record(job=half)

    page = browser_for(owner).get(job.get_absolute_url(), headers={"HX-Request": "true"})

    text = page.content.decode()
    assert "hx-trigger" not in text
    assert "No forecast: the 25%-data run" in text and "out of memory" in text
