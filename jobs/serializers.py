"""A job as each API shows it: legacy `fine-tune` objects and current `fine_tuning.job` ones."""

from __future__ import annotations

from typing import Any

from datasets.models import File
from jobs import forecast
from jobs.checkpoints import checkpoint_name
from jobs.liveness import worker_json
from jobs.models import Checkpoint, FineTuneJob, JobEvent


def ts(value: Any) -> int | None:
    return int(value.timestamp()) if value is not None else None


def file_json(file: File) -> dict[str, Any]:
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": ts(file.created_at),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "status_details": file.status_details,
    }


LEGACY_STATUS: dict[str, str] = {FineTuneJob.Status.QUEUED: "pending"}


def current_status(job: FineTuneJob) -> str:
    if job.status == FineTuneJob.Status.QUEUED:
        files = [job.training_file, job.validation_file]
        if any(f is not None and f.status == File.Status.UPLOADED for f in files):
            return "validating_files"
    return job.status


def _resolved(job: FineTuneJob, key: str) -> Any:
    return job.resolved_hyperparameters.get(key, job.hyperparameters.get(key))


def forecast_keys(job: FineTuneJob) -> dict[str, Any]:
    """Tunery's data-scaling forecast, in both APIs (clients ignore unknown keys)."""
    keys: dict[str, Any] = {
        "scaling_forecast": job.scaling_forecast,
        # Best-checkpoint selection as asked (docs/adr/0018); the winner is in the events.
        "early_stopping": job.early_stopping,
        # The devices it runs on (jobs.routing): the class whose queue it is sent to, and the
        # count asked for (null: the worker's default, one process unless its admin set more).
        "device_class": job.target_device_class or None,
        "device_count": job.device_count,
    }
    if job.scaling_forecast:
        keys["forecast"] = forecast.forecast_shown(
            job.forecast
        )  # null until its three runs have finished
    if job.parent_job_id is not None:
        keys["parent_job"] = job.parent_job.public_id if job.parent_job else None
        keys["data_fraction"] = job.data_fraction
    return keys


def legacy_event_json(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "fine-tune-event",
        "created_at": ts(event.created_at),
        "level": event.level,
        "message": event.message,
    }


def legacy_job_json(job: FineTuneJob, *, with_events: bool = True) -> dict[str, Any]:
    hyperparams: dict[str, Any] = {
        # None until the worker resolves them, as OpenAI did.
        "n_epochs": _resolved(job, "n_epochs") or 4,
        "batch_size": _resolved(job, "batch_size"),
        "learning_rate_multiplier": _resolved(job, "learning_rate_multiplier"),
        "prompt_loss_weight": _resolved(job, "prompt_loss_weight"),
    }
    if job.classification:
        hyperparams.update(
            {
                k: v
                for k, v in job.classification.items()
                if v is not None and k != "classification_betas"
            }
        )
        if job.classification.get("classification_betas"):
            hyperparams["classification_betas"] = job.classification["classification_betas"]
    body: dict[str, Any] = {
        "id": job.public_id,
        "object": "fine-tune",
        "model": job.model,
        "created_at": ts(job.created_at),
        "updated_at": ts(job.updated_at),
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.organization.public_id,
        "status": LEGACY_STATUS.get(job.status, job.status),
        "hyperparams": hyperparams,
        "training_files": [file_json(job.training_file)],
        "validation_files": [file_json(job.validation_file)] if job.validation_file else [],
        "result_files": [file_json(job.result_file)] if job.result_file else [],
        **forecast_keys(job),
        "worker": worker_json(job),  # Tunery extension (jobs.liveness)
    }
    if with_events:
        body["events"] = [legacy_event_json(e) for e in job.events.filter(type="message")]
    return body


def current_job_json(job: FineTuneJob) -> dict[str, Any]:
    hyperparameters = {
        "n_epochs": _resolved(job, "n_epochs") or "auto",
        "batch_size": _resolved(job, "batch_size") or "auto",
        "learning_rate_multiplier": _resolved(job, "learning_rate_multiplier") or "auto",
    }
    return {
        "object": "fine_tuning.job",
        "id": job.public_id,
        "model": job.model,
        "created_at": ts(job.created_at),
        "finished_at": ts(job.finished_at),
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.organization.public_id,
        "result_files": [job.result_file.public_id] if job.result_file else [],
        "status": current_status(job),
        "validation_file": job.validation_file.public_id if job.validation_file else None,
        "training_file": job.training_file.public_id,
        "hyperparameters": hyperparameters,
        "trained_tokens": job.trained_tokens,
        "integrations": job.integrations,
        "seed": job.seed,
        "estimated_finish": ts(job.estimated_finish),
        "error": job.error,
        "user_provided_suffix": job.suffix or None,
        "method": method_json(job, hyperparameters),
        "metadata": job.metadata,
        # Tunery extensions: clients ignore unknown keys.
        "training_method": job.method,
        "progress": round(job.progress, 4),
        "worker": worker_json(job),
        **forecast_keys(job),
    }


def method_json(job: FineTuneJob, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's `method`: {type, <type>: {hyperparameters}}; DPO's add `beta`."""
    kind = job.method_type
    inner = dict(hyperparameters)
    if kind == FineTuneJob.MethodType.DPO:
        inner["beta"] = _resolved(job, "beta") or "auto"
    return {"type": kind, kind: {"hyperparameters": inner}}


def current_event_json(event: JobEvent) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": event.public_id,
        "created_at": ts(event.created_at),
        "level": event.level,
        "message": event.message,
        "type": event.type,
        "data": event.data or {},
    }


CHECKPOINT_METRICS = (
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


def checkpoint_json(checkpoint: Checkpoint, job: FineTuneJob) -> dict[str, Any]:
    """OpenAI's `fine_tuning.job.checkpoint`; `metrics` holds exactly the SDK type's keys."""
    metrics = {key: checkpoint.metrics.get(key) for key in CHECKPOINT_METRICS}
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": checkpoint.public_id,
        "created_at": ts(checkpoint.created_at),
        "fine_tuned_model_checkpoint": checkpoint.name
        or checkpoint_name(job, checkpoint.step_number),
        "step_number": checkpoint.step_number,
        "metrics": {"step": float(checkpoint.step_number), **metrics},
        "fine_tuning_job_id": job.public_id,
    }
