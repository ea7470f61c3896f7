"""The data-scaling forecast: the math, the child runs job_create queues, cancel, and the forecast
stored when the last run finishes (no worker; tests/jobs/test_forecast_e2e.py trains for real)."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest
from django.test import Client

import engine
from jobs import forecast, runner, services, tasks
from jobs.forecast import (
    FLAT_SENTENCE,
    Point,
    fit_learning_curve,
    fit_power_law,
    forecast_from_points,
)
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


def on_curve(a: float, b: float, sizes: list[int], floor: float = 0.0) -> list[float]:
    return [1.0 - (floor + a * n ** (-b)) for n in sizes]


def forecast_of(*values: float, n: int = 400) -> dict[str, Any]:
    return forecast_from_points(points(*values, n=n), metric="m", label="accuracy")


def test_fit_recovers_a_power_law_in_the_error_rate() -> None:
    values = on_curve(2.0, 0.5, [100, 200, 400])

    curve = fit_power_law(list(zip([100, 200, 400], values, strict=True)))

    assert (curve.a, curve.b, curve.floor) == pytest.approx((2.0, 0.5, 0.0))
    assert curve.value(800) == pytest.approx(1 - 2.0 / math.sqrt(800))


def test_fit_is_least_squares_in_log_space() -> None:
    data = [(250, 0.71), (500, 0.78), (1000, 0.80)]

    curve = fit_power_law(data)

    slope, intercept = np.polyfit(
        [math.log2(n) for n, _ in data], [math.log2(1 - v) for _, v in data], 1
    )
    assert (curve.b, math.log2(curve.a)) == pytest.approx((-slope, intercept))


def test_fit_needs_two_sizes() -> None:
    with pytest.raises(ValueError, match="two different sizes"):
        fit_power_law([(100, 0.5), (100, 0.6)])


def test_three_points_fit_two_parameters_and_more_points_fit_a_floor() -> None:
    sizes = [100, 200, 400, 800, 1600]
    values = on_curve(3.0, 0.7, sizes, floor=0.05)

    three = fit_learning_curve(list(zip(sizes[:3], values[:3], strict=True)))
    five = fit_learning_curve(list(zip(sizes, values, strict=True)))

    assert three.floor == 0.0
    assert five.floor == pytest.approx(0.05, abs=0.002)
    assert five.value(3200) == pytest.approx(on_curve(3.0, 0.7, [3200], floor=0.05)[0], abs=2e-3)


def test_rising_curve_projects_the_true_value_with_a_tight_range() -> None:
    result = forecast_of(*on_curve(2.0, 0.5, [100, 200, 400]))

    truth = 1 - 2.0 / math.sqrt(800)  # 92.9%
    assert result["verdict"] == "rises" and result["flat"] is False
    assert result["current"] == {"examples": 400, "value": pytest.approx(0.9)}
    projected = result["projected"]
    assert projected["examples"] == 800
    assert projected["value"] == pytest.approx(truth)
    assert projected["low"] == pytest.approx(truth) and projected["high"] == pytest.approx(truth)
    assert result["fit"]["parameters"] == 2 and "Three points" in result["fit"]["note"]
    assert result["sentence"] == (
        "The curve still rises: doubling your data is expected to raise accuracy from 90.0% to "
        "92.9% (range 92.9%–92.9%)."
    )


def test_the_issue_case_reports_the_measured_value_and_still_rises() -> None:
    # SMS spam, 160 training rows: ¼, ½ and the full run measured 43.1%, 93.1% and 95.6%.
    # The straight line in log2(n) overshot 100% and was clamped: current 1.0, "flat".
    result = forecast_of(0.431, 0.931, 0.956, n=160)

    assert result["current"] == {"examples": 160, "value": 0.956}
    assert result["verdict"] == "rises" and not result["flat"]
    assert result["sentence"].startswith("The curve still rises")
    assert "from 95.6% to" in result["sentence"]
    projected = result["projected"]
    assert 0.956 + forecast.FLAT_GAIN <= projected["low"] <= projected["value"]
    assert projected["value"] <= projected["high"] < 1.0


def test_saturated_curve_is_flat() -> None:
    # 2 points over three doublings: each doubling now removes a sliver of the errors.
    result = forecast_of(0.900, 0.902, 0.903)

    assert result["verdict"] == "flat" and result["flat"] is True
    assert result["sentence"].startswith(FLAT_SENTENCE)
    assert result["projected"]["high"] - 0.903 < forecast.FLAT_GAIN


def test_flat_curve_with_a_dip_inside_the_noise_is_still_flat() -> None:
    result = forecast_of(0.900, 0.898, 0.901)

    assert result["verdict"] == "flat"
    assert result["current"]["value"] == 0.901


def test_curve_that_drops_with_more_data_is_unsupported() -> None:
    result = forecast_of(0.92, 0.90, 0.88)

    assert result["verdict"] == "unsupported" and result["flat"] is False
    assert result["sentence"] == (
        "Three points can't support a forecast here: the run on 200 examples scored lower "
        "(90.0%) than the one on 100 (92.0%). Measured now: 88.0% accuracy."
    )


def test_noisy_curve_whose_fits_disagree_is_unsupported() -> None:
    # Nearly nothing, then a jump: each pair of points tells a different rate.
    result = forecast_of(0.30, 0.35, 0.80)

    assert result["verdict"] == "unsupported"
    assert "too noisy" in result["sentence"]
    assert result["projected"]["high"] - result["projected"]["low"] > forecast.MAX_SPREAD


def test_steep_curve_that_then_bends_is_never_flat() -> None:
    # +10 points, then +0.5: the range keeps both rates, so the verdict can't be "flat".
    result = forecast_of(0.70, 0.80, 0.805)

    assert result["verdict"] == "unclear"
    assert result["sentence"].startswith("The curve may still rise a little")


def test_a_run_at_100_percent_is_at_the_ceiling_not_flat() -> None:
    result = forecast_of(0.50, 0.90, 1.0)

    assert result["verdict"] == "ceiling" and not result["flat"]
    assert result["current"]["value"] == 1.0
    assert "can't show any further gain" in result["sentence"]


def test_an_old_straight_line_forecast_is_refitted_when_shown() -> None:
    old = {
        "status": "succeeded",
        "metric": "m",
        "metric_label": "accuracy",
        "points": [asdict(p) for p in points(0.431, 0.931, 0.956, n=160)],
        "intercept": -1.0,
        "slope": 0.26,
        "current": {"examples": 160, "value": 1.0},
        "flat": True,
    }

    shown = forecast.forecast_shown(old)

    assert shown is not None and shown["verdict"] == "rises"
    assert shown["current"]["value"] == 0.956
    assert forecast.forecast_shown({"status": "failed", "message": "x"}) == {
        "status": "failed",
        "message": "x",
    }


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
        tasks.send_forecast_runs(job)
    assert [call.args[0] for call in delay.call_args_list] == [c.pk for c in children]
    # Resolved once from all 1000 examples by the default "small" rule: batch 16, multiplier
    # 0.25 × √(16/8) (a ¼ run resolved alone would get batch 8).
    fixed = {"n_epochs": 2, "batch_size": 16, "learning_rate_multiplier": 0.3536}
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

    spec = runner.job_spec(child, tmp_path, resume_from=None)

    assert spec.data_fraction == 0.25 and spec.final_full_validation
    # The batch size resolved from the whole file (16), not from the run's quarter (8).
    assert spec.batch_size == 16 and spec.seed == job.seed
    assert runner.job_spec(job, tmp_path, resume_from=None).final_full_validation


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
    assert result["verdict"] == "rises"
    assert result["sentence"].startswith("The curve still rises: doubling your data")


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


def test_the_task_metric_comes_first_and_token_accuracy_stands_in_when_it_is_missing(
    owner: Persona, files: tuple[Any, Any]
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(
            owner, files, compute_classification_metrics=True, classification_positive_class=" spam"
        )
    quarter, half = job.children.order_by("data_fraction")
    for run, token, accuracy in ((quarter, 0.5, 0.6), (half, 0.6, 0.8), (job, 0.7, 0.9)):
        FineTuneJob.objects.filter(pk=run.pk).update(
            status="succeeded",
            final_metrics={
                "full_validation_token_accuracy": token,
                "classification/accuracy": accuracy,
            },
        )

    result = forecast.forecast_record(job=job)

    assert result is not None and result["metric"] == "classification/accuracy"
    assert [p["value"] for p in result["points"]] == [0.6, 0.8, 0.9]
    # The engine skipped classification on one run (e.g. labels it couldn't tell apart).
    FineTuneJob.objects.filter(pk=half.pk).update(
        final_metrics={"full_validation_token_accuracy": 0.6}
    )
    result = forecast.forecast_record(job=job)
    assert result is not None and result["metric"] == "full_validation_token_accuracy"
    assert result["metric_label"] == "validation token accuracy"


def test_a_finished_forecast_run_keeps_its_results_but_registers_no_model(
    owner: Persona, files: tuple[Any, Any], tmp_path: Path
) -> None:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = create(owner, files)
    child = job.children.get(data_fraction=0.5)
    FineTuneJob.objects.filter(pk=child.pk).update(status="running", attempts=1)
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

    runner._finish_succeeded(child, 1, result)

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
    # The form speaks the product's own terms (issue #15 item 8), not the API's field names.
    error = refused.context["form"].errors["validation_file"][0]
    assert error == "“Data-scaling forecast” needs a “Validation file” to compare on."
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
