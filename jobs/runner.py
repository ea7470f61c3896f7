"""Worker-side use case for jobs: run a training job (one attempt of it).

Every write of an attempt (events, metrics, progress, checkpoints, the finish, model files) is
fenced by its attempt number (jobs.liveness.owned/hold), so a zombie worker that wakes after the
reaper requeued its job writes nothing; each attempt trains in its own directory
(jobs.paths.attempt_dir) and deletes nobody else's. Transient database errors are retried
(common.transient); only training errors fail a job. A pause (jobs.controls) is a stop with a
resume checkpoint: the attempt sees `pausing`, the engine writes the checkpoint and returns,
and the attempt records `paused`; the resume's attempt continues from that checkpoint.

Imports models and the engine, never jobs.tasks (the tasks import this module).
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

import engine
from accounts.models import Organization
from common import artifacts, transient
from common.redact import redact
from datasets.models import File
from datasets.processing import results_file_create
from engine import checkpoints as ckpt
from jobs import checkpoints, events, forecast, liveness, paths
from jobs.models import Checkpoint, FineTuneJob, JobEvent
from jobs.wandb import JobRun
from models_app.models import BaseModel, FineTunedModel, layer_names

logger = logging.getLogger(__name__)

# What job_run tells its task: done (or nothing to do), or try again later.
DONE, WAIT_FOR_FILES, DEFERRED = "done", "wait_for_files", "deferred"

PROGRESS_WRITE_SECONDS = 1.0


def _files_state(job: FineTuneJob) -> str:
    files = [f for f in (job.training_file, job.validation_file) if f is not None]
    waiting = next((f for f in files if f.status == File.Status.UPLOADED), None)
    if waiting is not None:
        waited = (timezone.now() - job.created_at).total_seconds()
        if waited < settings.TUNERY_JOB_FILE_WAIT_SECONDS:
            return "pending"
        return (
            f"file {waiting.public_id} was still being validated after {int(waited)} s "
            "(TUNERY_JOB_FILE_WAIT_SECONDS); check the default-queue workers, then create the "
            "job again"
        )
    bad = next((f for f in files if not f.is_usable_for_training), None)
    if bad is not None:
        return f"file {bad.public_id} failed validation: {bad.status_details or bad.status}"
    # Checked at create time when the files were already validated; here for those that weren't.
    dpo = job.method_type == FineTuneJob.MethodType.DPO
    for file in files:
        if dpo != (file.format == File.Format.PREFERENCE):
            wanted = "preference data" if dpo else "supervised (prompt/completion or chat) data"
            return (
                f"file {file.public_id} is {file.format or 'unknown'} data; a "
                f"{job.method_type} job needs {wanted}"
            )
    return "ok"


def _claim(job: FineTuneJob, worker: str) -> str:
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
            worker=worker[:200],
            worker_lost_at=None,
            step_at=now,
            seconds_per_step=None,
        )
    return DONE if claimed else "skipped"


def job_run(
    *,
    job_id: int,
    worker: str | None = None,
    left_queue: Callable[[FineTuneJob], None] | None = None,
) -> str:
    """Run one attempt of a queued job; `worker` names this worker (the job page shows it).

    `left_queue` is called with the job once it has left the queue for good, started or failed
    (the task layer sends a scaling forecast's runs then); not on a resumed attempt."""
    job = (
        FineTuneJob.objects.select_related(
            "organization",
            "base_model",
            "parent_model",
            "parent_checkpoint",
            "training_file",
            "validation_file",
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
        if left_queue is not None:
            left_queue(job)
        forecast.forecast_record(job=job)
        return DONE
    outcome = _claim(job, worker or liveness.worker_name())
    if outcome != DONE:
        return DEFERRED if outcome == DEFERRED else DONE
    job.refresh_from_db()
    if job.attempts == 1 and left_queue is not None:  # a resumed job's were sent already
        left_queue(job)
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
    """'Fine-tune is in the queue. Queue number: N' for every job still waiting.

    One read and one INSERT however long the queue: a position is the number of queued jobs
    created strictly before (as selectors.queue_position counts it), found in the sorted list.
    """
    waiting = list(
        FineTuneJob.objects.filter(status=FineTuneJob.Status.QUEUED).order_by("created_at", "id")
    )
    created = [job.created_at for job in waiting]
    events.emit_many(
        "queue",
        [(job, {"position": bisect.bisect_left(created, job.created_at)}) for job in waiting],
    )


def local_copy(file: File) -> str:
    """Storage may be S3: train from a local copy, cached by the file's immutable id (in the
    store's bounded cache when the store is remote)."""
    if artifacts.is_remote():
        return str(artifacts.local_path(f"media/{file.blob.name}", tree=False))
    path = paths.file_cache_path(file)
    if path.exists():
        os.utime(path)  # the cache is evicted least recently used first (jobs.retention)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        with file.blob.open("rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
        tmp.rename(path)
    return str(path)


def job_spec(job: FineTuneJob, work: Path, *, resume_from: Path | None) -> engine.TrainSpec:
    base = job.base_model
    hp = job.hyperparameters
    lr = base.base_lr_full if job.method == FineTuneJob.Method.FULL else base.base_lr_lora
    cls = job.classification or {}
    return engine.TrainSpec(
        model_source=base.source,
        train_path=local_copy(job.training_file),
        validation_path=local_copy(job.validation_file) if job.validation_file else None,
        output_dir=str(work),
        method="full" if job.method == FineTuneJob.Method.FULL else "lora",
        objective="dpo" if job.method_type == FineTuneJob.MethodType.DPO else "supervised",
        beta=hp.get("beta"),
        n_epochs=hp.get("n_epochs"),
        batch_size=hp.get("batch_size"),
        learning_rate_multiplier=hp.get("learning_rate_multiplier"),
        auto_rule=settings.TUNERY_AUTO_HYPERPARAMETERS,
        prompt_loss_weight=hp.get("prompt_loss_weight", 0.01),
        base_learning_rate=lr,
        seed=job.seed,
        compute_classification_metrics=bool(cls.get("compute_classification_metrics")),
        classification_n_classes=cls.get("classification_n_classes"),
        classification_positive_class=cls.get("classification_positive_class"),
        classification_betas=cls.get("classification_betas"),
        resume_from=str(resume_from) if resume_from else None,
        checkpoint_every_steps=settings.TUNERY_CHECKPOINT_EVERY_STEPS or None,
        checkpoint_every_seconds=settings.TUNERY_CHECKPOINT_EVERY_SECONDS or None,
        checkpoints_dir=str(paths.checkpoints_dir(job)),
        continue_from=_continue_from(job),
        cache_dir=str(settings.TUNERY_MODEL_CACHE_DIR),
        max_train_examples=None,
        data_fraction=job.data_fraction,
        final_full_validation=job.in_forecast,
        **early_stopping(job),
        **base_model_shape(base),
    )


def base_model_shape(base: BaseModel) -> dict[str, Any]:
    """The LoRA adapter and warm-up the base model asks for (set in the admin), as TrainSpec
    fields; the engine's defaults where it sets none. Alpha follows the rank (2r, as the
    default 16 for 8) so a bigger rank keeps the update's scale and the learning rate fits."""
    rank = base.lora_rank or engine.LoraSpec.r
    targets = layer_names(base.lora_target_modules)
    shape: dict[str, Any] = {
        "lora": engine.LoraSpec(
            r=rank,
            alpha=base.lora_alpha or 2 * rank,
            target_modules=targets or engine.LoraSpec.target_modules,
        )
    }
    if base.warmup_ratio is not None:
        shape["warmup_ratio"] = base.warmup_ratio
    return shape


def _run_engine(
    spec: engine.TrainSpec, hooks: engine.Hooks, processes: int | None = None
) -> engine.TrainResult:
    """Train in this process, or (more than one device: the job's `device_count`, else
    TUNERY_TRAIN_PROCESSES) in that many processes under torchrun (engine.distributed), one per
    device (gloo on CPU), whose rank 0's callbacks come back through files and are relayed to
    `hooks` here, where the database is."""
    n = processes or settings.TUNERY_TRAIN_PROCESSES
    if n <= 1:
        return engine.train(spec, hooks)
    logger.info("Training under torchrun in %d processes", n)
    import json
    import subprocess
    import sys
    from dataclasses import asdict

    from engine.distributed import die_with_parent

    run = Path(spec.output_dir) / "torchrun"
    run.mkdir(parents=True, exist_ok=True)
    files = {name: run / name for name in ("spec.json", "events.jsonl", "stop", "fenced")}
    files["spec.json"].write_text(json.dumps(asdict(spec)))
    result_path, log_path = run / "result.json", run / "torchrun.log"
    for name in ("stop", "fenced"):
        files[name].unlink(missing_ok=True)
    files["events.jsonl"].write_text("")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={n}", "-m", "engine.distributed", str(files["spec.json"]),
        str(result_path), "--events", str(files["events.jsonl"]),
        "--stop-file", str(files["stop"]), "--fenced-file", str(files["fenced"]),
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    relay = _Relay(files["events.jsonl"], hooks)
    try:
        while True:
            finished = proc.poll() is not None
            relay.pump()
            if finished:
                break
            if hooks.should_stop():
                files["stop"].touch()  # rank 0 sees it before its next step; all ranks stop
            if not hooks.may_write():
                files["fenced"].touch()
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not result_path.is_file():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"torchrun exited with {proc.returncode}: {tail}")
    data = json.loads(result_path.read_text())
    data.pop("peak_cuda_bytes", None)
    data["checkpoints"] = [engine.CheckpointInfo(**c) for c in data["checkpoints"]]
    return engine.TrainResult(**data)


class _Relay:
    """Replays rank 0's hook calls (JSON lines) on the runner's hooks, as they are written."""

    def __init__(self, path: Path, hooks: engine.Hooks) -> None:
        self.path, self.hooks, self.offset = path, hooks, 0

    def pump(self) -> None:
        import json

        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read()
        end = chunk.rfind(b"\n") + 1  # whole lines only: the last may be half-written
        self.offset += end
        for line in chunk[:end].splitlines():
            call = json.loads(line)
            hook = call.pop("hook")
            if hook == "on_checkpoint":
                self.hooks.on_checkpoint(engine.CheckpointInfo(**call["info"]))
            else:
                getattr(self.hooks, hook)(**call)


# The patience of "auto" and true: two epoch-end evaluations in a row without improvement. One
# would stop on a single noisy epoch; with the default 4 epochs, three would never stop.
AUTO_PATIENCE = 2


def early_stopping(job: FineTuneJob) -> dict[str, Any]:
    """The engine's best_checkpoint and early_stopping_patience for `job` (docs/adr/0018).

    "auto" is on with a validation file, unless the server asks for OpenAI's exact behaviour
    (TUNERY_EARLY_STOPPING=off). A forecast's three runs never select: they must measure the
    same training, epoch for epoch."""
    asked = job.early_stopping
    if asked == "auto":
        asked = settings.TUNERY_EARLY_STOPPING == "auto"
    if not asked or job.validation_file_id is None or job.in_forecast:
        return {"best_checkpoint": False, "early_stopping_patience": None}
    patience = AUTO_PATIENCE if asked is True else int(asked)
    return {"best_checkpoint": True, "early_stopping_patience": patience}


def resolved_hyperparameters(job: FineTuneJob, spec: engine.TrainSpec) -> dict[str, Any]:
    """The values `spec` trains with, "auto" ones filled in as the engine will (the job's
    `hyperparameters` as the API shows them once it runs)."""
    n_epochs, batch_size, lrm = engine.resolve_hyperparameters(
        job.training_file.example_count,
        spec.n_epochs,
        spec.batch_size,
        spec.learning_rate_multiplier,
        rule=engine.spec.auto_rule_for(spec.auto_rule, spec.objective),
        selecting=spec.best_checkpoint,  # more passes for a run that keeps its best checkpoint
    )
    resolved: dict[str, Any] = {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": lrm,
        "prompt_loss_weight": spec.prompt_loss_weight,
    }
    if job.method_type == FineTuneJob.MethodType.DPO:
        del resolved["prompt_loss_weight"]  # DPO trains the outputs only
        resolved["beta"] = spec.beta if spec.beta is not None else engine.spec.DEFAULT_BETA
    return resolved


def _continue_from(job: FineTuneJob) -> str | None:
    if job.parent_checkpoint is not None:
        return checkpoints.model_dir_of(job.parent_checkpoint)
    return job.parent_model.artifact_dir if job.parent_model else None


class JobHooks(engine.Hooks):
    """Turns the engine's callbacks into events, progress, checkpoints and cancellation.

    Every write is fenced by `attempt` and retried through transient database errors. Once
    the attempt has lost the job (cancelled, or requeued by the reaper), nothing more is written
    and the engine is told to stop and write nothing either.
    """

    def __init__(
        self,
        job: FineTuneJob,
        wandb_run: JobRun | None = None,
        *,
        attempt: int | None = None,
        resumed_at: int | None = None,
    ) -> None:
        self.job = job
        self.wandb_run = wandb_run
        self.attempt = job.attempts if attempt is None else attempt
        # The step this attempt resumed from (None: started from scratch).
        self.resumed_at = resumed_at
        self.step = resumed_at or 0
        self.last_progress_write = 0.0
        self.last_step_written = self.step
        self.started = time.monotonic()
        self.metrics_every = 1
        self.lost = False

    def _owned(self) -> Any:
        return liveness.owned(self.job.pk, self.attempt)

    def _write(self, what: str, fn: Callable[[], object]) -> bool:
        """Run `fn` in a transaction holding the fence; False (and nothing written) if this
        attempt no longer owns the job."""
        if self.lost:
            return False

        def fenced() -> bool:
            with transaction.atomic():
                if not liveness.hold(self.job.pk, self.attempt):
                    return False
                fn()
                return True

        if not transient.retry(fenced, what=f"job {self.job.public_id}: {what}"):
            self.lost = True
        return not self.lost

    def on_event(self, level: str, message: str) -> None:
        def emit() -> None:
            # A resumed attempt repeats the engine's set-up messages ("Training on N examples",
            # the hyperparameters...): show them once, as an uninterrupted run would.
            if (
                self.resumed_at is not None
                and JobEvent.objects.filter(
                    job=self.job, type=JobEvent.Type.MESSAGE, message=message
                ).exists()
            ):
                return
            events.emit(
                self.job,
                "engine",
                level=level if level in ("info", "warn", "error") else "info",
                message=message,
                written_by=self.attempt,
                at_step=self.step,
            )

        self._write("event", emit)

    def on_metrics(self, row: dict[str, float]) -> None:
        step = int(row.get("step", 0))
        self.step = step
        total = self.job.total_steps or step
        if step % self.metrics_every == 0 or any(k.startswith("classification/") for k in row):
            self._write(
                "metrics",
                lambda: events.emit_metrics(
                    self.job, step=step, total_steps=total, row=row, written_by=self.attempt
                ),
            )
        if self.wandb_run is not None and not self.lost:
            self.wandb_run.log(row)  # every row, not one in metrics_every

    def on_progress(
        self, step: int, total_steps: int, tokens: int, eta_seconds: float | None
    ) -> None:
        now = time.monotonic()
        self.step = step
        if self.job.total_steps != total_steps:
            self.job.total_steps = total_steps
            # Keep a few hundred metric events per job, not tens of thousands.
            self.metrics_every = max(1, total_steps // 300)
        if now - self.last_progress_write < PROGRESS_WRITE_SECONDS and step < total_steps:
            return
        self.last_progress_write = now
        started = self.job.started_at or timezone.now()
        elapsed = max((timezone.now() - started).total_seconds(), 1e-6)
        fields: dict[str, Any] = {
            "step": step,
            "total_steps": total_steps,
            "progress": min(step / total_steps, 1.0) if total_steps else 0.0,
            "trained_tokens": tokens,
            "tokens_per_second": tokens / elapsed,
            "estimated_finish": (
                timezone.now() + timedelta(seconds=eta_seconds) if eta_seconds is not None else None
            ),
            "heartbeat_at": timezone.now(),
        }
        if step != self.last_step_written:
            # The reaper tells a hung worker by these (jobs.liveness.hung_after).
            fields["step_at"] = timezone.now()
            done = step - (self.resumed_at or 0)
            if done > 0:
                fields["seconds_per_step"] = (now - self.started) / done
            self.last_step_written = step
        updated = transient.retry(
            lambda: self._owned().update(**fields), what=f"job {self.job.public_id}: progress"
        )
        if not updated:
            self.lost = True

    def _publish(self, path: str) -> bool:
        """Copy a finished checkpoint to the artifact store (a no-op with the local store), so a
        worker on another host can resume from it or serve it. A store that stays away is a
        warning, not a failed job: the checkpoint is still on this host."""
        if self.lost or not artifacts.is_remote():
            return not self.lost
        if not Path(path).is_dir():
            return False  # already rotated away (relayed late from torchrun's rank 0)
        try:
            artifacts.publish_tree(path)
        except Exception as exc:
            logger.exception("Job %s: could not store %s", self.job.public_id, path)
            self.on_event("warn", redact(f"Could not copy a checkpoint to the store: {exc}"))
            return False
        return True

    def on_resume_checkpoint(self, path: str) -> None:
        if self._publish(path) and artifacts.is_remote():
            # Keep in the store what the engine keeps on disk (the newest two).
            root = Path(path).parent
            kept = {p.name for p in root.iterdir() if p.name.startswith("step-")}
            prefix = artifacts.key_of(root)
            stored = {k[len(prefix) + 1 :].split("/", 1)[0] for k in artifacts.store().list(prefix)}
            for name in stored - kept:
                artifacts.delete_tree(f"{prefix}/{name}")

    def on_checkpoint(self, info: Any) -> None:
        self._publish(info.path)  # before its row: a listed checkpoint is always in the store
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
                # Not one of OpenAI's checkpoint metrics (the API leaves it out): the job page
                # shows it beside them when labelled data is ranked by it (docs/adr/0018).
                "classification_accuracy": info.metrics.get("classification/accuracy"),
                # Likewise for free text, ranked by the ROUGE-L of greedy generations.
                "generation_rouge_l": info.metrics.get("generation/rouge_l"),
            }
        )

        def record() -> None:
            exposure = checkpoints.exposure(self.job, info)
            Checkpoint.objects.update_or_create(
                job=self.job,
                step_number=info.step,
                defaults={
                    "epoch": info.epoch,
                    "metrics": metrics,
                    "path": str(info.path),
                    **exposure,
                },
            )
            # Announced as OpenAI does, for the checkpoints a user can see and use; the earlier
            # epochs' are kept for resuming and best-checkpoint selection only.
            if exposure["exposed"]:
                events.emit(
                    self.job,
                    "checkpoint",
                    step=info.step,
                    written_by=self.attempt,
                    at_step=info.step,
                )

        self._write("checkpoint", record)

    def _status(self) -> str | None:
        """The job's status while this attempt owns it; None once it lost it."""
        status = transient.retry(
            lambda: FineTuneJob.objects.filter(pk=self.job.pk, attempts=self.attempt)
            .values_list("status", flat=True)
            .first(),
            what=f"job {self.job.public_id}: status",
        )
        if status not in liveness.ATTEMPT_LIVE_STATUSES:
            self.lost = True
            return None
        return status

    def should_stop(self) -> bool:
        # Cancelled, or handed to another attempt by the reaper: stop within this step.
        # Pausing (still in ATTEMPT_LIVE_STATUSES) asks to stop *and* write a resume checkpoint.
        return self.lost or self._status() != FineTuneJob.Status.RUNNING

    def may_write(self) -> bool:
        return not self.lost and self._status() is not None


def _begin(job: FineTuneJob, attempt: int, resume_from: Path | None) -> int | None:
    """Announce the attempt. A later attempt drops what the lost ones wrote after the step it
    resumes from (their metrics and events for steps it trains again), so that the events read
    as an uninterrupted run's. Returns that step (None for a first attempt)."""
    if attempt == 1:
        transient.retry(
            lambda: events.emit_once(job, "started", written_by=attempt, at_step=0),
            what=f"job {job.public_id}: start",
        )
        return None
    step = ckpt.load_state(resume_from).step if resume_from else 0

    def begin() -> None:
        with transaction.atomic():
            if not liveness.hold(job.pk, attempt):
                return
            JobEvent.objects.filter(job=job, attempt__lt=attempt, step__gt=step).delete()
            if resume_from is None:  # starting over: the lost attempts' checkpoints are gone
                Checkpoint.objects.filter(job=job).delete()
            events.emit(
                job,
                "resumed",
                step=step,
                attempt=liveness.crashes(job),  # a resume after a pause is no new try
                max_attempts=settings.TUNERY_MAX_JOB_ATTEMPTS,
                written_by=attempt,
                at_step=step,
            )

    transient.retry(begin, what=f"job {job.public_id}: resume")
    return step


def _train(job: FineTuneJob, wandb_run: JobRun | None = None) -> None:
    attempt = job.attempts
    work = paths.attempt_dir(job, attempt)
    # A later attempt (after a crash, or the resume of a pause) continues from the newest
    # resume checkpoint.
    resume_from = checkpoints.resume_point(job) if attempt > 1 else None
    shutil.rmtree(work, ignore_errors=True)  # this attempt's own dir only
    if resume_from is None:
        # Nothing to resume from: earlier attempts' dirs and checkpoints are stale.
        for old in paths.attempt_dirs(job):
            if old != work:
                shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(paths.checkpoints_dir(job), ignore_errors=True)
        if artifacts.is_remote():  # and their copies in the store
            for stored in checkpoints.stored_attempts(job):
                artifacts.delete_tree(stored)
            artifacts.delete_tree(artifacts.key_of(paths.checkpoints_dir(job)))
    resumed_at = _begin(job, attempt, resume_from)
    heartbeat = liveness.Heartbeat(job, attempt)
    heartbeat.start()
    try:
        spec = job_spec(job, work, resume_from=resume_from)
        resolved = resolved_hyperparameters(job, spec)
        if job.in_forecast:
            # A forecast's runs all train with the values resolved from the full training set
            # (the engine would resolve a ¼ run's auto batch size from its ¼).
            spec.n_epochs, spec.batch_size = resolved["n_epochs"], resolved["batch_size"]
            spec.learning_rate_multiplier = resolved["learning_rate_multiplier"]
        transient.retry(
            lambda: liveness.owned(job.pk, attempt).update(resolved_hyperparameters=resolved),
            what=f"job {job.public_id}: hyperparameters",
        )
        job.resolved_hyperparameters = resolved
        if wandb_run is not None:
            wandb_run.start(resume=resume_from is not None)  # never raises: a warning event
        hooks = JobHooks(job, wandb_run, attempt=attempt, resumed_at=resumed_at)
        try:
            result = _run_engine(spec, hooks, job.device_count)
        except engine.TrainingError as exc:
            _finish_failed(job, attempt, str(exc), code="training_error")
            return
        except Exception as exc:
            if transient.is_transient(exc):
                # The database stayed away longer than TUNERY_DB_RETRY_SECONDS: not the job's
                # fault. Stop here; the reaper requeues it and the next attempt resumes.
                logger.exception(
                    "Job %s: lost the database; leaving it to the reaper", job.public_id
                )
                return
            logger.exception("Job %s crashed", job.public_id)
            _finish_failed(
                job, attempt, f"internal error ({type(exc).__name__}: {exc})", code="internal_error"
            )
            return
        if result.status != "succeeded":
            logger.info("Job %s attempt %s stopped", job.public_id, attempt)
            _settle_pause(job, attempt, result)
            return  # cancelled (or reclaimed): whoever changed the status wrote the event
        transient.retry(
            lambda: _finish_succeeded(job, attempt, result), what=f"job {job.public_id}: finish"
        )
    finally:
        heartbeat.stop()


def _settle_pause(job: FineTuneJob, attempt: int, result: engine.TrainResult) -> None:
    """The engine stopped and wrote its resume checkpoint: a job being paused is now paused
    (if this attempt still owns it), at that checkpoint's step."""
    if result.resume_checkpoint is None:
        return  # fenced out: the attempt may not write, so it cannot settle anything either
    step = ckpt.load_state(Path(result.resume_checkpoint)).step

    def settle() -> None:
        with transaction.atomic():
            paused = (
                liveness.owned(job.pk, attempt)
                .filter(status=FineTuneJob.Status.PAUSING)
                .update(status=FineTuneJob.Status.PAUSED, step=step, estimated_finish=None)
            )
            if paused:
                events.emit(job, "paused", step=step, written_by=attempt, at_step=step)

    transient.retry(settle, what=f"job {job.public_id}: pause")


def _finish_failed(job: FineTuneJob, attempt: int, reason: str, *, code: str) -> None:
    reason = redact(reason)  # exception text: it may hold server paths

    def fail() -> None:
        with transaction.atomic():
            failed = liveness.owned(job.pk, attempt).update(
                status=FineTuneJob.Status.FAILED,
                error={"code": code, "message": reason, "param": None},
                finished_at=timezone.now(),
            )
            if failed:
                events.emit(job, "failed", reason=reason, written_by=attempt)

    transient.retry(fail, what=f"job {job.public_id}: fail")


def model_name(job: FineTuneJob, when: Any) -> str:
    """Reference §3.6 (legacy) and §5.2 (current)."""
    org = job.organization.slug
    if job.api == FineTuneJob.Api.LEGACY:
        base = job.parent_model.base.name if job.parent_model else job.model
        suffix = f":{job.suffix}" if job.suffix else ""
        return f"{base}:ft-{org}{suffix}-{when:%Y-%m-%d-%H-%M-%S}"
    # The job's own id, not a fresh random one: its checkpoints are named after the model
    # (`…:ckpt-step-N`) before the model exists.
    return checkpoints.current_model_name(job)


def _finish_succeeded(job: FineTuneJob, attempt: int, result: Any) -> None:
    """Store the results file and the model, register the model, emit the final events: all
    or nothing, and only if `attempt` still owns the job.

    The model is copied to a staging dir of this attempt's own and renamed into place inside
    the fenced transaction, so an attempt that lost the job never replaces (or deletes) the
    model of the one that has it.
    """
    now = timezone.now()
    name = model_name(job, now)
    keep_model = not job.is_forecast_run  # a forecast's ¼ and ½ runs are measurements
    remote = artifacts.is_remote()
    target = paths.models_root() / str(job.organization_id) / job.public_id
    staging = target.with_name(f".{job.public_id}.attempt-{attempt}")
    # With a remote store the model goes straight to the store, under this attempt's own key
    # (an attempt that lost the job never overwrites the owner's objects); the row names it.
    stored_key = f"models/{job.organization_id}/{job.public_id}-a{attempt}"
    registered = False
    shutil.rmtree(staging, ignore_errors=True)
    if keep_model and remote:
        artifacts.publish_tree(result.model_dir, stored_key)
    elif keep_model:
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(result.model_dir, staging)
    try:
        with transaction.atomic():
            if not liveness.hold(job.pk, attempt):
                return  # cancelled in the last instant, or another attempt owns the job
            with open(result.results_csv, "rb") as results_csv:  # streamed, not read whole
                results = results_file_create(
                    organization=job.organization,
                    content=results_csv,
                    filename="compiled_results.csv",
                )
            liveness.owned(job.pk, attempt).update(
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
            # Announced as the live ones were, so the events name every listed checkpoint.
            for step in checkpoints.expose_trained_epochs(job):
                events.emit(job, "checkpoint", step=step, written_by=attempt, at_step=step)
            if keep_model:
                if not remote:
                    shutil.rmtree(target, ignore_errors=True)  # only the job's owner gets here
                    staging.rename(target)
                FineTunedModel.objects.create(
                    name=name,
                    organization=job.organization,
                    base=job.base_model,
                    job=job,
                    method=job.method,
                    artifact_dir=stored_key if remote else str(target),
                )
                events.emit(job, "model", name=name, written_by=attempt)
            events.emit(job, "results", file_id=results.public_id, written_by=attempt)
            events.emit(job, "succeeded", written_by=attempt)
            registered = True
    except BaseException:
        if not remote and not staging.exists():  # renamed, then the transaction failed
            shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if keep_model and remote and not registered:
            artifacts.delete_tree(stored_key)  # nothing refers to this attempt's upload
    # The attempts' dirs hold resume checkpoints with optimizer state and a copy of the model,
    # now stored as the model and as the results file: large, and no longer needed. The
    # per-epoch checkpoints stay where they are, served as models (jobs.checkpoints);
    # jobs.retention decides how long.
    for work in paths.attempt_dirs(job):
        shutil.rmtree(work, ignore_errors=True)
    if remote:
        for stored in checkpoints.stored_attempts(job):
            artifacts.delete_tree(stored)


def metric_rows(job: FineTuneJob) -> list[dict[str, Any]]:
    """The per-step results rows recorded so far (for live charts)."""
    rows = JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS).values_list(
        "data", flat=True
    )
    return [r["results"] for r in rows if r and "results" in r]
