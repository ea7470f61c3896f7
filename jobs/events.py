"""Job events in each API's own words (reference §3.5 legacy strings, §5.3 current ones)."""

from __future__ import annotations

import math
from typing import Any

from accounts import webhook_events
from common.ids import random_id
from common.redact import redact
from jobs.models import FineTuneJob, JobEvent

# kind -> (legacy text, current text, level). Both are format strings over the job and kwargs.
TEXTS: dict[str, tuple[str, str, str]] = {
    "created": (
        "Created fine-tune: {job.public_id}",
        "Created fine-tuning job: {job.public_id}",
        "info",
    ),
    "cost": ("Fine-tune costs ${cost:.2f}", "Fine-tuning job costs ${cost:.2f}", "info"),
    "enqueued": (
        "Fine-tune enqueued. Queue number: {position}",
        "Files validated, moving job to queued state. Queue number: {position}",
        "info",
    ),
    "queue": (
        "Fine-tune is in the queue. Queue number: {position}",
        "Job is in the queue. Queue number: {position}",
        "info",
    ),
    "started": ("Fine-tune started", "Fine-tuning job started", "info"),
    "resumed": (
        "Fine-tune resumed from step {step} (attempt {attempt}/{max_attempts})",
        "Fine-tuning job resumed from step {step} (attempt {attempt}/{max_attempts})",
        "info",
    ),
    # The reaper's first word (jobs.liveness): the worker went silent.
    "worker_lost": (
        "Worker lost, resuming: {worker} has not reported for {seconds} s",
        "Worker lost, resuming: {worker} has not reported for {seconds} s",
        "warn",
    ),
    "worker_back": (
        "Worker {worker} is reporting again",
        "Worker {worker} is reporting again",
        "info",
    ),
    "requeued": (
        "Worker stopped responding; the fine-tune goes back in the queue to resume from its "
        "last checkpoint (attempt {attempt}/{max_attempts})",
        "Worker stopped responding; the job goes back in the queue to resume from its last "
        "checkpoint (attempt {attempt}/{max_attempts})",
        "warn",
    ),
    "hung": (
        "Worker {worker} made no progress for {seconds} s (hung); the fine-tune goes back in "
        "the queue to resume from its last checkpoint (attempt {attempt}/{max_attempts})",
        "Worker {worker} made no progress for {seconds} s (hung); the job goes back in the "
        "queue to resume from its last checkpoint (attempt {attempt}/{max_attempts})",
        "warn",
    ),
    "epoch": ("Completed epoch {epoch}/{n_epochs}", "Completed epoch {epoch}/{n_epochs}", "info"),
    "checkpoint": (
        "Checkpoint saved at step {step}",
        "Checkpoint created at step {step}",
        "info",
    ),
    "pausing": (
        "Fine-tune pausing: it stops after the current step and saves a checkpoint",
        "Pausing fine-tuning job: it stops after the current step and saves a checkpoint",
        "info",
    ),
    "paused": (
        "Fine-tune paused at step {step}",
        "Fine-tuning job paused at step {step}",
        "info",
    ),
    "resuming": (
        "Fine-tune resume requested: it goes back in the queue and continues from step {step}",
        "Resuming fine-tuning job: it goes back in the queue and continues from step {step}",
        "info",
    ),
    "engine": ("{message}", "{message}", "info"),
    # Job creation found no online worker of the job's device class (jobs.services._devices).
    "no_worker": ("{message}", "{message}", "warn"),
    "model": ("Uploaded model: {name}", "New fine-tuned model created: {name}", "info"),
    "results": (
        "Uploaded result file: {file_id}",
        "Uploaded result file: {file_id}",
        "info",
    ),
    "succeeded": ("Fine-tune succeeded", "The job has successfully completed", "info"),
    "failed": ("Fine-tune failed: {reason}", "Fine-tuning job failed: {reason}", "error"),
    "cancelled": (
        "Fine-tune cancelled",
        "Fine tuning process stopping due to job cancellation",
        "warn",
    ),
}


# The kinds that end a job, and the webhook event each one sends (accounts/webhook_events.py).
WEBHOOK_TYPES = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}


def emit(
    job: FineTuneJob,
    kind: str,
    *,
    level: str | None = None,
    written_by: int | None = None,
    at_step: int | None = None,
    **kwargs: Any,
) -> JobEvent:
    """Write one event; for a terminal kind, also queue its webhook deliveries.

    `written_by`/`at_step`: the attempt and training step of a worker's event (see
    JobEvent.attempt). A worker's terminal event is written inside its fenced transaction
    (jobs.liveness.hold), so a fenced-out attempt neither writes the event nor sends the webhook.
    """
    event = _message(job, kind, level=level, written_by=written_by, at_step=at_step, **kwargs)
    event.save()
    if kind in WEBHOOK_TYPES:
        # Every terminal transition emits exactly one of these, inside its guarded update's
        # transaction: the delivery is queued only if that transaction commits.
        webhook_events.event_send(
            organization_id=job.organization_id,
            event_type=WEBHOOK_TYPES[kind],
            data={"id": job.public_id},
        )
    return event


def emit_once(
    job: FineTuneJob, kind: str, *, written_by: int | None = None, at_step: int | None = None
) -> None:
    """emit(), unless the job already has this very event (same text, attempt and step).

    For an event written outside a transaction under `transient.retry`, which runs the write
    again after a connection error: when the first try had committed and only its reply was
    lost, the second finds the event instead of writing it twice."""
    event = _message(job, kind, written_by=written_by, at_step=at_step)
    written = JobEvent.objects.filter(
        job=job, type=event.type, message=event.message, attempt=written_by, step=at_step
    )
    if not written.exists():
        emit(job, kind, written_by=written_by, at_step=at_step)


def _message(
    job: FineTuneJob,
    kind: str,
    *,
    level: str | None = None,
    written_by: int | None = None,
    at_step: int | None = None,
    **kwargs: Any,
) -> JobEvent:
    legacy, current, default_level = TEXTS[kind]
    text = legacy if job.api == FineTuneJob.Api.LEGACY else current
    return JobEvent(
        public_id=random_id("ftevent-", 24),
        job=job,
        level=level or default_level,
        type=JobEvent.Type.MESSAGE,
        # Events reach API clients: exception text in them must not show server paths.
        message=redact(text.format(job=job, **kwargs)),
        data={},
        attempt=written_by,
        step=at_step,
    )


def emit_many(kind: str, jobs: list[tuple[FineTuneJob, dict[str, Any]]]) -> list[JobEvent]:
    """emit() for many jobs in one INSERT (e.g. every queued job's new position when one starts).

    Never for a terminal kind: those queue webhooks, one per job, inside their own transaction.
    """
    if kind in WEBHOOK_TYPES:
        raise ValueError(f"{kind!r} sends webhooks: emit it per job")
    return JobEvent.objects.bulk_create([_message(job, kind, **kwargs) for job, kwargs in jobs])


def finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON (and PostgreSQL's jsonb) has no NaN: a metric not computed this step is null."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def emit_metrics(
    job: FineTuneJob,
    *,
    step: int,
    total_steps: int,
    row: dict[str, float],
    written_by: int | None = None,
) -> None:
    """Current-API `metrics` events, in the shape of OpenAI's (reference §5.3)."""
    row = finite(row)
    data: dict[str, Any] = {"step": step, "total_steps": total_steps}
    names = {
        "training_loss": "train_loss",
        "training_token_accuracy": "train_mean_token_accuracy",
        "validation_loss": "valid_loss",
        "validation_token_accuracy": "valid_mean_token_accuracy",
    }
    for ours, theirs in names.items():
        if row.get(ours) is not None:
            data[theirs] = row[ours]
    data["results"] = row  # the full results row, for the live charts
    parts = [f"training loss={data['train_loss']:.4f}"] if "train_loss" in data else []
    if "valid_loss" in data:
        parts.append(f"validation loss={data['valid_loss']:.4f}")
    JobEvent.objects.create(
        job=job,
        type=JobEvent.Type.METRICS,
        message=f"Step {step}/{total_steps}: " + ", ".join(parts),
        data=data,
        attempt=written_by,
        step=step,
    )
