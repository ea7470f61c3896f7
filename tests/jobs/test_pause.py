"""Pause and resume, exposed checkpoints and "compare checkpoints", at the service and runner
level (the SDK drives them against a live server in tests/openai_sdk/test_sdk_full.py)."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from django.utils import timezone
from safetensors.torch import load_file

from datasets import services as file_services
from datasets.processing import file_validate
from engine import checkpoints as ckpt
from jobs import checkpoints, comparison, controls, liveness, paths, runner, services
from jobs.models import Checkpoint, CheckpointComparison, FineTuneJob, JobEvent
from jobs.services import JobRequest
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona, sms_subset
from tests.factories import FileFactory

Status = FineTuneJob.Status


def queued_job(owner: Persona, **fields: Any) -> FineTuneJob:
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="current", model="ada", training_file=training.public_id),
        )
    FineTuneJob.objects.filter(pk=job.pk).update(**fields)
    job.refresh_from_db()
    return job


def post(persona: Persona, path: str) -> Any:
    # The SDK sends an empty body with Content-Type: application/json.
    return persona.api().post(path, b"", content_type="application/json")


@pytest.mark.parametrize(
    ("status", "action"),
    [
        (Status.QUEUED, "pause"),
        (Status.PAUSED, "pause"),
        (Status.SUCCEEDED, "pause"),
        (Status.RUNNING, "resume"),
        (Status.QUEUED, "resume"),
        (Status.CANCELLED, "resume"),
    ],
)
def test_pause_and_resume_refuse_other_statuses_with_a_clear_400(
    owner: Persona, status: str, action: str
) -> None:
    job = queued_job(owner, status=status)

    response = post(owner, f"/v1/fine_tuning/jobs/{job.public_id}/{action}")

    error = assert_envelope(response, 400)
    assert error["param"] == "fine_tuning_job_id"
    assert f"Cannot {action} a job that is {status}" in error["message"]
    job.refresh_from_db()
    assert job.status == status


def test_resume_of_a_job_still_pausing_says_to_wait(owner: Persona) -> None:
    job = queued_job(owner, status=Status.PAUSING)

    error = assert_envelope(post(owner, f"/v1/fine_tuning/jobs/{job.public_id}/resume"), 400)

    assert "still pausing" in error["message"]


def test_pause_marks_a_running_job_pausing_and_resume_requeues_it(
    owner: Persona, outsider: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    job = queued_job(owner, status=Status.RUNNING)
    assert post(outsider, f"/v1/fine_tuning/jobs/{job.public_id}/pause").status_code == 404

    paused = post(owner, f"/v1/fine_tuning/jobs/{job.public_id}/pause").json()
    FineTuneJob.objects.filter(pk=job.pk).update(status=Status.PAUSED)  # as the runner does
    with (
        mock.patch("jobs.tasks.run_training_job.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        resumed = post(owner, f"/v1/fine_tuning/jobs/{job.public_id}/resume").json()

    assert paused["status"] == "pausing"
    assert resumed["status"] == "queued"
    delay.assert_called_once_with(job.pk)
    job.refresh_from_db()
    assert (job.pauses, job.paused_at) == (1, None)
    messages = list(job.events.values_list("message", flat=True))
    assert (
        "Pausing fine-tuning job: it stops after the current step and saves a checkpoint"
        in messages
    )
    assert any(m.startswith("Resuming fine-tuning job") for m in messages)


def test_a_worker_lost_while_pausing_leaves_the_job_paused(owner: Persona, settings: Any) -> None:
    settings.TUNERY_HEARTBEAT_STALE_SECONDS = 5
    stale = timezone.now() - timedelta(seconds=60)
    job = queued_job(owner, status=Status.PAUSING, heartbeat_at=stale, attempts=1, step=7)
    # It died before writing the pause's checkpoint: its newest resume checkpoint is step 6's.
    point = paths.attempt_dir(job, 1) / "resume" / "step-6"
    (point / "model").mkdir(parents=True)
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        (point / name).write_bytes(b"")
    (point / "state.json").write_text('{"step": 6, "epoch": 1, "batch_in_epoch": 2}')

    # The reaper's requeue is for running jobs: a pausing one is never sent to another worker.
    assert liveness.jobs_reap() == []
    assert liveness.jobs_settle_stale_pauses() == 1

    job.refresh_from_db()
    assert (job.status, job.step, job.attempts) == (Status.PAUSED, 6, 1)
    assert job.events.filter(message="Fine-tuning job paused at step 6").exists()
    assert liveness.jobs_settle_stale_pauses() == 0  # settled once


def test_a_worker_beating_while_pausing_keeps_its_job(owner: Persona, settings: Any) -> None:
    settings.TUNERY_HEARTBEAT_STALE_SECONDS = 5
    job = queued_job(owner, status=Status.PAUSING, heartbeat_at=timezone.now(), attempts=1)

    assert liveness.jobs_settle_stale_pauses() == 0
    # Still the attempt's: it may write its checkpoint (the fence lets it) and settle itself.
    assert liveness.owned(job.pk, 1).exists()
    job.refresh_from_db()
    assert job.status == Status.PAUSING


def test_pauses_do_not_count_as_crashes(owner: Persona, settings: Any) -> None:
    # Two pause/resume cycles and one crash: 3 claims, but only the crash is a failed try.
    settings.TUNERY_HEARTBEAT_STALE_SECONDS = 5
    stale = timezone.now() - timedelta(seconds=60)
    job = queued_job(owner, status=Status.RUNNING, heartbeat_at=stale, attempts=3, pauses=2)

    assert liveness.jobs_reap() == [job.pk]

    job.refresh_from_db()
    assert job.status == Status.QUEUED
    assert job.events.filter(message__contains="(attempt 2/3)").exists()


# --- real (tiny) training in this process ---------------------------------------------------


def tiny_job(owner: Persona, tmp_path: Path, **req: Any) -> FineTuneJob:
    tmp_path.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for name, rows, split in (("training_file", 16, "train"), ("validation_file", 8, "valid")):
        path = sms_subset(tmp_path, rows, name=f"{name}.jsonl", split=split)
        file = file_services.file_create(
            organization=owner.org,
            uploaded_by=owner.user,
            filename=path.name,
            purpose="fine-tune",
            content=path.read_bytes(),
        )
        file_validate(file_id=file.pk)
        files[name] = file.public_id
    with mock.patch("jobs.tasks.run_training_job.delay"):
        return services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api="current", model="tiny-llama", n_epochs=3, batch_size=4, seed=5, **files, **req
            ),
        )


def losses(job: FineTuneJob) -> list[float]:
    job.refresh_from_db()
    assert job.result_file is not None
    with job.result_file.blob.open("r") as fh:
        return [float(row["training_loss"]) for row in csv.DictReader(fh)]


def adapter(job: FineTuneJob) -> dict[str, torch.Tensor]:
    return load_file(str(Path(job.result_model.artifact_dir) / "adapter_model.safetensors"))


def metrics_events(job: FineTuneJob) -> list[tuple[int | None, str]]:
    return list(
        JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS)
        .order_by("id")
        .values_list("step", "message")
    )


@pytest.mark.slow
def test_paused_and_resumed_job_ends_exactly_where_an_uninterrupted_one_does(
    owner: Persona, tiny_base: Any, tmp_path: Path, django_capture_on_commit_callbacks: Any
) -> None:
    # Pause a running job (nothing killed), resume it: the next attempt continues from the
    # pause's resume checkpoint, and the results, the adapter and the metrics events are an
    # uninterrupted run's.
    straight = tiny_job(owner, tmp_path / "a")
    runner.job_run(job_id=straight.pk)
    paused = tiny_job(owner, tmp_path / "b")
    progress = runner.JobHooks.on_progress

    def pause_at_step_5(self: Any, step: int, *args: Any) -> None:
        progress(self, step, *args)
        if step == 5:  # mid-epoch 2: the runner stops before step 6
            controls.job_pause(job=self.job)

    with mock.patch.object(runner.JobHooks, "on_progress", pause_at_step_5):
        runner.job_run(job_id=paused.pk)
    paused.refresh_from_db()
    assert (paused.status, paused.step, paused.attempts, paused.pauses) == (Status.PAUSED, 5, 1, 1)
    # The pause wrote a resume checkpoint at step 5 in its attempt's dir (no Checkpoint row:
    # it is no epoch end), and that is where the job will continue.
    point = ckpt.latest_resume(paths.attempt_dir(paused, 1))
    assert point is not None
    assert point == checkpoints.resume_point(paused)
    assert (point.name, ckpt.load_state(point).step, ckpt.load_state(point).batch_in_epoch) == (
        "step-5",
        5,
        1,
    )
    assert not Checkpoint.objects.filter(job=paused, step_number=5).exists()
    with (
        mock.patch("jobs.tasks.run_training_job.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        controls.job_resume(job=paused)
    delay.assert_called_once_with(paused.pk)
    runner.job_run(job_id=paused.pk)

    paused.refresh_from_db()
    assert paused.status == Status.SUCCEEDED, paused.error
    assert (paused.attempts, paused.pauses) == (2, 1)
    assert losses(paused) == pytest.approx(losses(straight), rel=1e-4)
    a, b = adapter(straight), adapter(paused)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    messages = list(paused.events.values_list("message", flat=True))
    assert "Fine-tuning job paused at step 5" in messages
    assert any(m.startswith("Resuming fine-tuning job") and "from step 5" in m for m in messages)
    # Attempt 2 resumed from the pause's checkpoint; a pause is no crash ("attempt 1/3").
    assert "Fine-tuning job resumed from step 5 (attempt 1/3)" in messages
    assert "Resumed from checkpoint at step 5" in messages
    assert messages.count("Fine-tuning job started") == 1
    # Each step reported once, with an uninterrupted run's figures.
    assert metrics_events(paused) == metrics_events(straight)
    # The three epoch ends are models, kept where the engine wrote them now that the attempts'
    # work dirs are gone: jobs/<job>/checkpoints/step-N/model.
    rows = Checkpoint.objects.filter(job=paused).order_by("step_number")
    assert [(c.step_number, c.exposed) for c in rows] == [(4, True), (8, True), (12, True)]
    for checkpoint in rows:
        model_dir = Path(checkpoints.model_dir_of(checkpoint))
        assert (
            model_dir == paths.checkpoints_dir(paused) / f"step-{checkpoint.step_number}" / "model"
        )
        assert checkpoint.name == f"{paused.fine_tuned_model}:ckpt-step-{checkpoint.step_number}"
        assert (model_dir / "adapter_model.safetensors").is_file()
        assert not (model_dir / "optimizer.pt").exists()
    assert paths.attempt_dirs(paused) == []

    # Compare checkpoints: every exposed one scored on the whole validation set, by the task.
    with (
        mock.patch("jobs.tasks.compare_checkpoints.delay") as queued,
        django_capture_on_commit_callbacks(execute=True),
    ):
        controls.comparison_start(job=paused)
    queued.assert_called_once_with(paused.pk)
    comparison.comparison_run(job_id=paused.pk)
    result = CheckpointComparison.objects.get(job=paused)
    assert result.status == CheckpointComparison.Status.SUCCEEDED, result.error
    assert [r["step_number"] for r in result.rows] == [4, 8, 12]
    for row in result.rows:
        assert 0 < row["metrics"]["full_validation_loss"] < 20
        assert 0 <= row["metrics"]["full_validation_token_accuracy"] <= 1
        # What training ranked the checkpoints by: the labels' accuracy (ham/spam, unasked).
        assert 0 <= row["metrics"]["classification/accuracy"] <= 1
    comparison.comparison_run(job_id=paused.pk)  # a duplicate task message does nothing
    assert CheckpointComparison.objects.get(job=paused).rows == result.rows


def test_compare_needs_a_validation_file_and_checkpoints(owner: Persona) -> None:
    job = queued_job(owner, status=Status.SUCCEEDED)

    with pytest.raises(Exception, match="no validation_file"):
        controls.comparison_start(job=job)
    FineTuneJob.objects.filter(pk=job.pk).update(validation_file=job.training_file)
    job.refresh_from_db()
    with pytest.raises(Exception, match="no checkpoints"):
        controls.comparison_start(job=job)
