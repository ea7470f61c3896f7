"""Job events in each API's own words (reference §3.5 legacy strings, §5.3 current ones)."""

from __future__ import annotations

import math
from typing import Any

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
    "worker_lost": (
        "Worker stopped responding; the fine-tune goes back in the queue to resume from its "
        "last checkpoint (attempt {attempt}/{max_attempts})",
        "Worker stopped responding; the job goes back in the queue to resume from its last "
        "checkpoint (attempt {attempt}/{max_attempts})",
        "warn",
    ),
    "epoch": ("Completed epoch {epoch}/{n_epochs}", "Completed epoch {epoch}/{n_epochs}", "info"),
    "checkpoint": (
        "Checkpoint saved at step {step}",
        "Checkpoint created at step {step}",
        "info",
    ),
    "engine": ("{message}", "{message}", "info"),
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


def emit(job: FineTuneJob, kind: str, *, level: str | None = None, **kwargs: Any) -> JobEvent:
    legacy, current, default_level = TEXTS[kind]
    text = legacy if job.api == FineTuneJob.Api.LEGACY else current
    return JobEvent.objects.create(
        job=job,
        level=level or default_level,
        type=JobEvent.Type.MESSAGE,
        message=text.format(job=job, **kwargs),
        data={},
    )


def finite(row: dict[str, Any]) -> dict[str, Any]:
    """JSON (and PostgreSQL's jsonb) has no NaN: a metric not computed this step is null."""
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()
    }


def emit_metrics(job: FineTuneJob, *, step: int, total_steps: int, row: dict[str, float]) -> None:
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
    )
