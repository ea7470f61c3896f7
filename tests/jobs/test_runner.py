"""The worker side: claiming, waiting for files, limits, the stale-heartbeat reaper."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.utils import timezone

import engine
from jobs import liveness, runner, services
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from tests.conftest import Persona
from tests.factories import FileFactory


def make_job(owner: Persona, validation: bool = False, **file_fields: Any) -> FineTuneJob:
    training = FileFactory.create(organization=owner.org, **file_fields)
    valid = FileFactory.create(organization=owner.org).public_id if validation else None
    with mock.patch("jobs.tasks.run_training_job.delay"):
        return services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api="legacy", model="ada", training_file=training.public_id, validation_file=valid
            ),
        )


@pytest.mark.parametrize("status", ["running", "cancelled", "succeeded"])
def test_job_run_is_a_noop_unless_queued(owner: Persona, status: str) -> None:
    # A redelivered or duplicate message must not train twice.
    job = make_job(owner)
    FineTuneJob.objects.filter(pk=job.pk).update(status=status)

    with mock.patch("engine.train") as train:
        assert runner.job_run(job_id=job.pk) == runner.DONE

    train.assert_not_called()
    job.refresh_from_db()
    assert job.status == status


def test_job_waits_while_its_file_is_validating(owner: Persona) -> None:
    job = make_job(owner)
    job.training_file.status = "uploaded"
    job.training_file.save()

    with mock.patch("engine.train") as train:
        assert runner.job_run(job_id=job.pk) == runner.WAIT_FOR_FILES

    train.assert_not_called()
    job.refresh_from_db()
    assert job.status == "queued"


def test_a_job_waits_for_its_files_only_so_long(owner: Persona, settings: Any) -> None:
    settings.TUNERY_JOB_FILE_WAIT_SECONDS = 600
    job = make_job(owner)
    job.training_file.status = "uploaded"
    job.training_file.save()
    FineTuneJob.objects.filter(pk=job.pk).update(created_at=timezone.now() - timedelta(seconds=601))

    assert runner.job_run(job_id=job.pk) == runner.DONE

    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error["message"].startswith(
        f"file {job.training_file.public_id} was still being validated after 60"
    )


def test_job_fails_clearly_when_its_file_failed_validation(owner: Persona) -> None:
    job = make_job(owner)
    job.training_file.status, job.training_file.error_count = "error", 2
    job.training_file.status_details = "2 errors; line 7: invalid JSON"
    job.training_file.save()

    runner.job_run(job_id=job.pk)

    job.refresh_from_db()
    assert job.status == "failed"
    assert "line 7: invalid JSON" in job.error["message"]
    assert job.events.last().message.startswith("Fine-tune failed: file ")


def test_org_limit_defers_the_job(owner: Persona, settings: Any) -> None:
    settings.TUNERY_MAX_RUNNING_JOBS_PER_ORG = 1
    running = make_job(owner)
    FineTuneJob.objects.filter(pk=running.pk).update(status="running")
    waiting = make_job(owner)

    with mock.patch("engine.train") as train:
        assert runner.job_run(job_id=waiting.pk) == runner.DEFERRED

    train.assert_not_called()
    waiting.refresh_from_db()
    assert waiting.status == "queued"


def test_reaper_requeues_a_stale_job_then_gives_up(owner: Persona, settings: Any) -> None:
    settings.TUNERY_MAX_JOB_ATTEMPTS = 2
    job = make_job(owner)
    stale = timezone.now() - timedelta(seconds=settings.TUNERY_HEARTBEAT_STALE_SECONDS + 5)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=stale, attempts=1)

    assert liveness.jobs_reap() == [job.pk]
    job.refresh_from_db()
    assert job.status == "queued"
    assert "resume from its last checkpoint (attempt 2/2)" in job.events.last().message

    FineTuneJob.objects.filter(pk=job.pk).update(status="running", heartbeat_at=stale, attempts=2)
    assert liveness.jobs_reap() == []
    job.refresh_from_db()
    assert job.status == "failed" and job.error["code"] == "worker_lost"


def test_reaper_leaves_live_and_finished_jobs_alone(owner: Persona) -> None:
    live = make_job(owner)
    FineTuneJob.objects.filter(pk=live.pk).update(status="running", heartbeat_at=timezone.now())
    old = timezone.now() - timedelta(days=1)
    for status in ("cancelled", "succeeded", "failed"):
        done = make_job(owner)
        FineTuneJob.objects.filter(pk=done.pk).update(status=status, heartbeat_at=old)

    assert liveness.jobs_reap() == []
    assert FineTuneJob.objects.filter(status="queued").count() == 0


def test_model_names_follow_the_reference(owner: Persona) -> None:
    job = make_job(owner)
    job.suffix = "my-model"
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    assert runner.model_name(job, when) == "ada:ft-acme:my-model-2026-01-02-03-04-05"
    job.suffix = ""
    assert runner.model_name(job, when) == "ada:ft-acme-2026-01-02-03-04-05"
    job.api = "current"
    name = runner.model_name(job, when)
    assert name.startswith("ft:SmolLM2-135M-Instruct:acme::") and len(name.rsplit(":", 1)[1]) == 8


def test_an_attempt_that_lost_its_job_writes_nothing_and_is_told_to_stop(
    owner: Persona,
) -> None:
    job = make_job(owner)
    FineTuneJob.objects.filter(pk=job.pk).update(status="running", attempts=2)
    job.refresh_from_db()
    live, zombie = runner.JobHooks(job, attempt=2), runner.JobHooks(job, attempt=1)
    events_before = job.events.count()

    assert (live.should_stop(), live.may_write()) == (False, True)
    assert (zombie.should_stop(), zombie.may_write()) == (True, False)
    zombie.on_event("info", "Completed epoch 1/1")
    zombie.on_metrics({"step": 3, "training_loss": 1.0})
    zombie.on_progress(3, 10, 100, 5.0)
    zombie.on_checkpoint(
        engine.CheckpointInfo(epoch=1, step=3, path="/x", metrics={"training_loss": 1.0})
    )

    job.refresh_from_db()
    assert job.events.count() == events_before and job.step == 0
    assert not job.checkpoints.exists()
    live.on_metrics({"step": 3, "training_loss": 1.0})
    assert job.events.filter(type="metrics", attempt=2, step=3).exists()
    # A cancel: stop, and write no last checkpoint (the job is over).
    FineTuneJob.objects.filter(pk=job.pk).update(status="cancelled")
    assert (live.should_stop(), live.may_write()) == (True, False)


def test_only_the_checkpoints_a_user_can_use_are_announced(owner: Persona) -> None:
    # OpenAI keeps (and announces) the last 3 epochs' checkpoints; earlier epochs' are kept
    # here too, for resuming and best-checkpoint selection, but are not models to announce.
    job = make_job(owner)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status="running", attempts=1, resolved_hyperparameters={"n_epochs": 5}
    )
    job.refresh_from_db()
    hooks = runner.JobHooks(job, attempt=1)
    for epoch in range(1, 6):
        hooks.on_checkpoint(engine.CheckpointInfo(epoch=epoch, step=2 * epoch, path="/x"))

    exposed = job.checkpoints.filter(exposed=True).values_list("step_number", flat=True)
    assert sorted(exposed) == [6, 8, 10] and job.checkpoints.count() == 5
    announced = job.events.filter(message__startswith="Checkpoint saved at step")  # legacy API
    assert sorted(announced.values_list("message", flat=True)) == [
        "Checkpoint saved at step 10",
        "Checkpoint saved at step 6",
        "Checkpoint saved at step 8",
    ]


@pytest.mark.parametrize("rule", ["openai", "small"])
def test_the_auto_rule_setting_reaches_the_engine(
    owner: Persona, settings: Any, tmp_path: Any, rule: str
) -> None:
    settings.TUNERY_AUTO_HYPERPARAMETERS = rule
    job = make_job(owner)
    assert runner.job_spec(job, tmp_path, resume_from=None).auto_rule == rule


def test_the_base_models_lora_shape_and_warmup_reach_the_engine(
    owner: Persona, tmp_path: Any
) -> None:
    job = make_job(owner)
    spec = runner.job_spec(job, tmp_path, resume_from=None)
    assert (spec.lora.r, spec.lora.alpha, spec.lora.target_modules) == (8, 16, "all-linear")
    assert spec.warmup_ratio == engine.TrainSpec.warmup_ratio

    base = job.base_model
    base.lora_rank, base.lora_target_modules, base.warmup_ratio = 32, "q_proj,v_proj", 0.1
    base.save()
    job.refresh_from_db()
    spec = runner.job_spec(job, tmp_path, resume_from=None)
    # Alpha follows the rank (2r) unless the base model sets it.
    assert (spec.lora.r, spec.lora.alpha, spec.lora.target_modules) == (
        32,
        64,
        ["q_proj", "v_proj"],
    )
    assert spec.warmup_ratio == 0.1
    base.lora_alpha = 8
    base.save()
    job.refresh_from_db()
    assert runner.job_spec(job, tmp_path, resume_from=None).lora.alpha == 8


@pytest.mark.parametrize(("early_stopping", "epochs"), [("auto", 6), ("off", 3)])
def test_a_job_that_keeps_its_best_checkpoint_gets_the_rules_extra_passes(
    owner: Persona, settings: Any, tmp_path: Any, early_stopping: str, epochs: int
) -> None:
    # 500 examples and a validation file: the "small" rule's 3 epochs become 6 when the job
    # selects its best checkpoint, and the job's hyperparameters say what it trains with.
    settings.TUNERY_AUTO_HYPERPARAMETERS = "small"
    settings.TUNERY_EARLY_STOPPING = early_stopping
    job = make_job(owner, validation=True, stats={"examples": 500, "tokens": {"total": 20000}})
    spec = runner.job_spec(job, tmp_path, resume_from=None)
    assert runner.resolved_hyperparameters(job, spec)["n_epochs"] == epochs
