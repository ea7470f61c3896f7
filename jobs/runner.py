"""Worker-side use cases for jobs: run a training job, and put back jobs whose worker died.

Imports models and the engine, never jobs.tasks (the tasks import this module).
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import close_old_connections, transaction
from django.db.models import F
from django.utils import timezone

import engine
from accounts.models import Organization
from common.ids import random_id
from datasets.models import File
from datasets.services import file_create
from jobs import events, forecast
from jobs.models import Checkpoint, FineTuneJob, JobEvent
from jobs.selectors import queue_position
from jobs.wandb import JobRun
from models_app.models import FineTunedModel

logger = logging.getLogger(__name__)

# What job_run tells its task: done (or nothing to do), or try again later.
DONE, WAIT_FOR_FILES, DEFERRED = "done", "wait_for_files", "deferred"

HEARTBEAT_SECONDS = 10.0
PROGRESS_WRITE_SECONDS = 1.0


def job_dir(job: FineTuneJob) -> Path:
    return Path(settings.DATA_DIR) / "jobs" / job.public_id


def _files_state(job: FineTuneJob) -> str:
    files = [f for f in (job.training_file, job.validation_file) if f is not None]
    if any(f.status == File.Status.UPLOADED for f in files):
        return "pending"
    bad = next((f for f in files if not f.is_usable_for_training), None)
    if bad is not None:
        return f"file {bad.public_id} failed validation: {bad.status_details or bad.status}"
    return "ok"


def _claim(job: FineTuneJob) -> str:
    """Move QUEUED → RUNNING with one conditional UPDATE, within the org's running-job limit."""
    with transaction.atomic():
        # Serialises claims per org so two workers can't both take the last slot.
        Organization.objects.select_for_update().filter(pk=job.organization_id).first()
        running = FineTuneJob.objects.filter(
            organization_id=job.organization_id, status=FineTuneJob.Status.RUNNING
        ).count()
        if running >= settings.TUNERY_MAX_RUNNING_JOBS_PER_ORG:
            return DEFERRED
        now = timezone.now()
        claimed = FineTuneJob.objects.filter(pk=job.pk, status=FineTuneJob.Status.QUEUED).update(
            status=FineTuneJob.Status.RUNNING,
            heartbeat_at=now,
            started_at=job.started_at or now,
            attempts=F("attempts") + 1,
        )
    return DONE if claimed else "skipped"


def job_run(*, job_id: int) -> str:
    from jobs import services  # services -> tasks -> runner: import at call time

    job = (
        FineTuneJob.objects.select_related(
            "organization", "base_model", "parent_model", "training_file", "validation_file"
        )
        .filter(pk=job_id)
        .first()
    )
    # A duplicate or redelivered message finds the job already claimed or finished.
    if job is None or job.status != FineTuneJob.Status.QUEUED:
        logger.info("Job %s is not queued any more; skipping", job_id)
        return DONE
    state = _files_state(job)
    if state == "pending":
        return WAIT_FOR_FILES
    if state != "ok":
        _fail_queued(job, state)
        services.forecast_runs_dispatch(job)
        forecast.forecast_record(job=job)
        return DONE
    outcome = _claim(job)
    if outcome != DONE:
        return DEFERRED if outcome == DEFERRED else DONE
    job.refresh_from_db()
    if job.attempts == 1:  # a resumed job's runs were sent when it first started
        services.forecast_runs_dispatch(job)
    _announce_queue_moved()
    wandb_run = JobRun(job)  # logs only if the job or its organization asked for W&B
    try:
        _train(job, wandb_run)
    finally:
        wandb_run.close()
    forecast.forecast_record(job=job)  # the last of a forecast's three runs stores it
    return DONE


def _fail_queued(job: FineTuneJob, reason: str) -> None:
    with transaction.atomic():
        failed = FineTuneJob.objects.filter(pk=job.pk, status=FineTuneJob.Status.QUEUED).update(
            status=FineTuneJob.Status.FAILED,
            error={"code": "invalid_training_file", "message": reason, "param": "training_file"},
            finished_at=timezone.now(),
        )
        if failed:
            events.emit(job, "failed", reason=reason)


def _announce_queue_moved() -> None:
    """'Fine-tune is in the queue. Queue number: N' for every job still waiting."""
    for waiting in FineTuneJob.objects.filter(status=FineTuneJob.Status.QUEUED).order_by(
        "created_at"
    ):
        events.emit(waiting, "queue", position=queue_position(waiting))


def _local_copy(file: File) -> str:
    """Storage may be S3: train from a local copy, cached by the file's immutable id."""
    path = Path(settings.DATA_DIR) / "cache" / "files" / file.public_id
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        with file.blob.open("rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        tmp.rename(path)
    return str(path)


def _spec(job: FineTuneJob, work: Path, *, resume: bool) -> engine.TrainSpec:
    base = job.base_model
    hp = job.hyperparameters
    lr = base.base_lr_full if job.method == FineTuneJob.Method.FULL else base.base_lr_lora
    cls = job.classification or {}
    return engine.TrainSpec(
        model_source=base.source,
        train_path=_local_copy(job.training_file),
        validation_path=_local_copy(job.validation_file) if job.validation_file else None,
        output_dir=str(work),
        method=job.method,
        n_epochs=hp.get("n_epochs"),
        batch_size=hp.get("batch_size"),
        learning_rate_multiplier=hp.get("learning_rate_multiplier"),
        prompt_loss_weight=hp.get("prompt_loss_weight", 0.01),
        base_learning_rate=lr,
        seed=job.seed,
        compute_classification_metrics=bool(cls.get("compute_classification_metrics")),
        classification_n_classes=cls.get("classification_n_classes"),
        classification_positive_class=cls.get("classification_positive_class"),
        classification_betas=cls.get("classification_betas"),
        resume=resume,
        continue_from=job.parent_model.artifact_dir if job.parent_model else None,
        cache_dir=str(settings.TUNERY_MODEL_CACHE_DIR),
        max_train_examples=None,
        data_fraction=job.data_fraction,
        final_full_validation=job.in_forecast,
    )


class JobHooks(engine.Hooks):
    """Turns the engine's callbacks into events, progress, checkpoints and cancellation."""

    def __init__(self, job: FineTuneJob, wandb_run: JobRun | None = None) -> None:
        self.job = job
        self.wandb_run = wandb_run
        self.last_progress_write = 0.0
        self.metrics_every = 1

    def _running(self) -> Any:
        return FineTuneJob.objects.filter(pk=self.job.pk, status=FineTuneJob.Status.RUNNING)

    def on_event(self, level: str, message: str) -> None:
        events.emit(
            self.job,
            "engine",
            level=level if level in ("info", "warn", "error") else "info",
            message=message,
        )

    def on_metrics(self, row: dict[str, float]) -> None:
        step = int(row.get("step", 0))
        total = self.job.total_steps or step
        if step % self.metrics_every == 0 or any(k.startswith("classification/") for k in row):
            events.emit_metrics(self.job, step=step, total_steps=total, row=row)
        if self.wandb_run is not None:
            self.wandb_run.log(row)  # every row, not one in metrics_every

    def on_progress(
        self, step: int, total_steps: int, tokens: int, eta_seconds: float | None
    ) -> None:
        now = time.monotonic()
        if self.job.total_steps != total_steps:
            self.job.total_steps = total_steps
            # Keep a few hundred metric events per job, not tens of thousands.
            self.metrics_every = max(1, total_steps // 300)
        if now - self.last_progress_write < PROGRESS_WRITE_SECONDS and step < total_steps:
            return
        self.last_progress_write = now
        started = self.job.started_at or timezone.now()
        elapsed = max((timezone.now() - started).total_seconds(), 1e-6)
        self._running().update(
            step=step,
            total_steps=total_steps,
            progress=min(step / total_steps, 1.0) if total_steps else 0.0,
            trained_tokens=tokens,
            tokens_per_second=tokens / elapsed,
            estimated_finish=(
                timezone.now() + timedelta(seconds=eta_seconds) if eta_seconds is not None else None
            ),
            heartbeat_at=timezone.now(),
        )

    def on_checkpoint(self, info: Any) -> None:
        metrics = events.finite(
            {
                "train_loss": info.metrics.get("training_loss"),
                "train_mean_token_accuracy": info.metrics.get("training_token_accuracy"),
                "valid_loss": info.metrics.get("validation_loss"),
                "valid_mean_token_accuracy": info.metrics.get("validation_token_accuracy"),
                "full_valid_loss": info.metrics.get("full_validation_loss"),
                "full_valid_mean_token_accuracy": info.metrics.get(
                    "full_validation_token_accuracy"
                ),
            }
        )
        Checkpoint.objects.update_or_create(
            job=self.job,
            step_number=info.step,
            defaults={"epoch": info.epoch, "metrics": metrics, "path": str(info.path)},
        )
        events.emit(self.job, "checkpoint", step=info.step)

    def should_stop(self) -> bool:
        # Cancelled, or handed to another worker by the reaper: stop within this step.
        return not self._running().exists()


class Heartbeat(threading.Thread):
    """Beats while the job runs, even through long steps or model loading."""

    def __init__(self, job_pk: int) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_pk}")
        self.job_pk = job_pk
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(HEARTBEAT_SECONDS):
                FineTuneJob.objects.filter(
                    pk=self.job_pk, status=FineTuneJob.Status.RUNNING
                ).update(heartbeat_at=timezone.now())
        finally:
            close_old_connections()

    def stop(self) -> None:
        self.stopped.set()


def _train(job: FineTuneJob, wandb_run: JobRun | None = None) -> None:
    work = job_dir(job) / "work"
    resume = job.attempts > 1 and any((work / "checkpoints").glob("*"))
    if resume:
        last = Checkpoint.objects.filter(job=job).order_by("-step_number").first()
        events.emit(
            job,
            "resumed",
            step=last.step_number if last else 0,
            attempt=job.attempts,
            max_attempts=settings.TUNERY_MAX_JOB_ATTEMPTS,
        )
    else:
        shutil.rmtree(work, ignore_errors=True)
        events.emit(job, "started")
    heartbeat = Heartbeat(job.pk)
    heartbeat.start()
    try:
        spec = _spec(job, work, resume=resume)
        n_examples = job.training_file.example_count
        n_epochs, batch_size, lrm = engine.resolve_hyperparameters(
            n_examples, spec.n_epochs, spec.batch_size, spec.learning_rate_multiplier
        )
        resolved = {
            "n_epochs": n_epochs,
            "batch_size": batch_size,
            "learning_rate_multiplier": lrm,
            "prompt_loss_weight": spec.prompt_loss_weight,
        }
        if job.in_forecast:
            # A forecast's runs all train with the values resolved from the full training set
            # (the engine would resolve a ¼ run's auto batch size from its ¼).
            spec.n_epochs, spec.batch_size = n_epochs, batch_size
            spec.learning_rate_multiplier = lrm
        FineTuneJob.objects.filter(pk=job.pk).update(resolved_hyperparameters=resolved)
        job.resolved_hyperparameters = resolved
        if wandb_run is not None:
            wandb_run.start(resume=resume)  # never raises: a W&B failure is a warning event
        result = engine.train(spec, JobHooks(job, wandb_run))
    except engine.TrainingError as exc:
        _finish_failed(job, str(exc), code="training_error")
        return
    except Exception as exc:
        logger.exception("Job %s crashed", job.public_id)
        _finish_failed(job, f"internal error ({type(exc).__name__}: {exc})", code="internal_error")
        return
    finally:
        heartbeat.stop()
    if result.status != "succeeded":
        logger.info("Job %s stopped (%s)", job.public_id, result.status)
        return  # cancelled (or reclaimed): whoever changed the status wrote the event
    _finish_succeeded(job, result)


def _finish_failed(job: FineTuneJob, reason: str, *, code: str) -> None:
    with transaction.atomic():
        failed = FineTuneJob.objects.filter(pk=job.pk, status=FineTuneJob.Status.RUNNING).update(
            status=FineTuneJob.Status.FAILED,
            error={"code": code, "message": reason, "param": None},
            finished_at=timezone.now(),
        )
        if failed:
            events.emit(job, "failed", reason=reason)


def model_name(job: FineTuneJob, when: Any) -> str:
    """Reference §3.6 (legacy) and §5.2 (current)."""
    org = job.organization.slug
    if job.api == FineTuneJob.Api.LEGACY:
        base = job.parent_model.base.name if job.parent_model else job.model
        suffix = f":{job.suffix}" if job.suffix else ""
        return f"{base}:ft-{org}{suffix}-{when:%Y-%m-%d-%H-%M-%S}"
    return f"ft:{job.base_model.name}:{org}:{job.suffix}:{random_id('', 8)}"


def _finish_succeeded(job: FineTuneJob, result: Any) -> None:
    now = timezone.now()
    name = model_name(job, now)
    artifacts = Path(settings.DATA_DIR) / "models" / str(job.organization_id) / job.public_id
    shutil.rmtree(artifacts, ignore_errors=True)
    if not job.is_forecast_run:  # a forecast's ¼ and ½ runs are measurements, not models
        artifacts.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(result.model_dir, artifacts)
    with transaction.atomic():
        results = file_create(
            organization=job.organization,
            uploaded_by=None,
            filename="compiled_results.csv",
            purpose=File.Purpose.FINE_TUNE_RESULTS,
            content=ContentFile(Path(result.results_csv).read_bytes()),
        )
        File.objects.filter(pk=results.pk).update(
            status=File.Status.PROCESSED, format=File.Format.RESULTS
        )
        done = FineTuneJob.objects.filter(pk=job.pk, status=FineTuneJob.Status.RUNNING).update(
            status=FineTuneJob.Status.SUCCEEDED,
            fine_tuned_model=None if job.is_forecast_run else name,
            final_metrics=events.finite(result.final_metrics),
            result_file=results,
            trained_tokens=result.trained_tokens,
            resolved_hyperparameters=result.hyperparameters,
            progress=1.0,
            finished_at=now,
            estimated_finish=None,
        )
        if not done:
            # Cancelled in the last instant: keep nothing of this run.
            transaction.set_rollback(True)
            shutil.rmtree(artifacts, ignore_errors=True)
            return
        if not job.is_forecast_run:
            FineTunedModel.objects.create(
                name=name,
                organization=job.organization,
                base=job.base_model,
                job=job,
                method=job.method,
                artifact_dir=str(artifacts),
            )
            events.emit(job, "model", name=name)
        events.emit(job, "results", file_id=results.public_id)
        events.emit(job, "succeeded")
    # The work dir holds checkpoints with optimizer state and a copy of the model, now stored
    # under DATA_DIR/models and as the results file: large, and no longer needed.
    shutil.rmtree(job_dir(job) / "work", ignore_errors=True)


def jobs_requeue_stale() -> list[int]:
    """Beat task: RUNNING jobs whose heartbeat is stale lost their worker.

    Each goes back in the queue to resume from its last checkpoint, up to
    TUNERY_MAX_JOB_ATTEMPTS tries; then it fails with a clear error. Returns the ids to enqueue.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.TUNERY_HEARTBEAT_STALE_SECONDS)
    requeue: list[int] = []
    stale = FineTuneJob.objects.filter(status=FineTuneJob.Status.RUNNING, heartbeat_at__lt=cutoff)
    for job in stale.select_related("organization"):
        with transaction.atomic():
            if job.attempts >= settings.TUNERY_MAX_JOB_ATTEMPTS:
                reason = (
                    f"the training worker stopped responding {job.attempts} times; "
                    "giving up (see the worker logs)"
                )
                changed = FineTuneJob.objects.filter(
                    pk=job.pk, status=FineTuneJob.Status.RUNNING, heartbeat_at=job.heartbeat_at
                ).update(
                    status=FineTuneJob.Status.FAILED,
                    error={"code": "worker_lost", "message": reason, "param": None},
                    finished_at=timezone.now(),
                )
                if changed:
                    events.emit(job, "failed", reason=reason)
                    forecast.forecast_record(job=job)
                continue
            # Guarded on the heartbeat we read: a worker that just beat keeps its job.
            changed = FineTuneJob.objects.filter(
                pk=job.pk, status=FineTuneJob.Status.RUNNING, heartbeat_at=job.heartbeat_at
            ).update(status=FineTuneJob.Status.QUEUED)
            if changed:
                events.emit(
                    job,
                    "worker_lost",
                    attempt=job.attempts + 1,
                    max_attempts=settings.TUNERY_MAX_JOB_ATTEMPTS,
                )
                requeue.append(job.pk)
    return requeue


def metric_rows(job: FineTuneJob) -> list[dict[str, Any]]:
    """The per-step results rows recorded so far (for live charts)."""
    rows = JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS).values_list(
        "data", flat=True
    )
    return [r["results"] for r in rows if r and "results" in r]
