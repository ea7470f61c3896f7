"""Web-side use cases for fine-tune jobs: create (both APIs and the form) and cancel."""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Organization
from common.errors import ServiceError
from common.ids import random_id
from datasets.labels import known_labels
from datasets.models import File
from datasets.selectors import file_find_for_org
from engine.spec import BETA_RANGE, auto_rule_for, resolve_hyperparameters
from jobs import events, forecast, tasks
from jobs.checkpoints import has_files
from jobs.models import FineTuneJob
from jobs.routing import DEVICE_COUNT_MAX, queue_for_class
from jobs.selectors import any_worker_announced, queue_position, workers_for_class
from models_app.models import BaseModel
from models_app.selectors import Usable, base_model_find, usable_model_find

# OpenAI's ranges (reference §3.1 and §5.1).
N_EPOCHS_RANGE = (1, 50)
BATCH_SIZE_RANGE = (1, 256)
LRM_RANGE = (1e-6, 10.0)
PLW_RANGE = (0.0, 1.0)
SEED_MAX = 2147483647


@dataclass
class JobRequest:
    """What a client asked for, in either API's terms, before validation."""

    api: str
    model: str | None
    training_file: str | None
    validation_file: str | None = None
    n_epochs: Any = None
    batch_size: Any = None
    learning_rate_multiplier: Any = None
    prompt_loss_weight: Any = None
    compute_classification_metrics: Any = False
    classification_n_classes: Any = None
    classification_positive_class: Any = None
    classification_betas: Any = None
    suffix: Any = None
    seed: Any = None
    metadata: Any = None
    integrations: Any = None
    method: str = FineTuneJob.Method.LORA
    # OpenAI's method.type (supervised | dpo) and DPO's beta; the legacy API is supervised.
    method_type: str = FineTuneJob.MethodType.SUPERVISED
    beta: Any = None
    scaling_forecast: bool = False
    early_stopping: Any = "auto"
    # Tunery's devices: a class (a queue suffix, jobs.routing) and how many of them.
    device_class: Any = None
    device_count: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def _bad(param: str, message: str) -> ServiceError:
    return ServiceError(message, status=400, param=param)


def _int_in(value: Any, param: str, lo: int, hi: int) -> int | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(param, f"{param} must be an integer between {lo} and {hi} or 'auto'.")
    if not lo <= value <= hi:
        raise _bad(param, f"{param} must be between {lo} and {hi}, got {value}.")
    return value


def _float_in(value: Any, param: str, lo: float, hi: float) -> float | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(param, f"{param} must be a number or 'auto'.")
    if not lo <= float(value) <= hi:
        raise _bad(param, f"{param} must be between {lo} and {hi}, got {value}.")
    return float(value)


def slug_suffix(suffix: Any, *, api: str) -> str:
    """Legacy: lower-case, punctuation/whitespace → '-', ≤ 40 chars. Current: ≤ 64 chars."""
    if suffix in (None, ""):
        return ""
    if not isinstance(suffix, str):
        raise _bad("suffix", "suffix must be a string.")
    limit = 40 if api == FineTuneJob.Api.LEGACY else 64
    if len(suffix) > limit:
        raise _bad("suffix", f"suffix must be at most {limit} characters, got {len(suffix)}.")
    if api == FineTuneJob.Api.LEGACY:
        return re.sub(r"[^a-z0-9]+", "-", suffix.lower()).strip("-")
    # ':' separates the parts of a current-API model name.
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", suffix).strip("-")


def _resolve_model(organization: Organization, name: str | None) -> tuple[BaseModel, Usable | None]:
    if not name:
        raise _bad("model", "model is required.")
    if not isinstance(name, str):
        raise _bad("model", "model must be a string.")
    # Continued training of a fine-tune or checkpoint: the org's own, or one shared with it.
    parent = usable_model_find(organization=organization, name=name)
    if parent is not None:
        return parent.base, parent
    base = base_model_find(name=name)
    if base is None:
        raise ServiceError(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            param="model",
            code="model_not_found",
        )
    return base, None


def _resolve_file(organization: Organization, file_id: Any, param: str, base: BaseModel) -> File:
    if not isinstance(file_id, str) or not file_id:
        raise _bad(param, f"{param} must be a file ID.")
    file = file_find_for_org(organization=organization, file_id=file_id)
    if file is None:
        raise ServiceError(f"No such File object: {file_id}", status=400, param=param)
    if file.purpose != File.Purpose.FINE_TUNE:
        raise _bad(param, f"File {file_id} has purpose {file.purpose!r}, not 'fine-tune'.")
    if file.status == File.Status.ERROR or file.error_count:
        raise _bad(
            param,
            f"File {file_id} has {file.error_count or 'validation'} error(s) and can't be used "
            f"for training: {file.status_details or 'see the dataset page'}",
        )
    if file.format in CHAT_FORMATS and not base.has_chat_template:
        raise _bad(
            param, f"File {file_id} is {file.format} data but {base.name} has no chat template."
        )
    return file


CHAT_FORMATS = (File.Format.CHAT, File.Format.PREFERENCE)


def _check_method_data(req: JobRequest, files: dict[str, File]) -> None:
    """DPO trains on preference pairs and only DPO does: a file of the other kind is a 400
    naming it. (A file still being validated has no format yet; the runner's engine refuses it
    then, with the line at fault.)"""
    dpo = req.method_type == FineTuneJob.MethodType.DPO
    for param, file in files.items():
        if not file.format:
            continue
        preference = file.format == File.Format.PREFERENCE
        if dpo and not preference:
            raise _bad(
                param,
                f"File {file.public_id} is {file.format.replace('_', '/')} data; method.type "
                "'dpo' needs preference data (`input`, `preferred_output`, "
                "`non_preferred_output`).",
            )
        if preference and not dpo:
            raise _bad(
                param,
                f"File {file.public_id} is preference data, which trains with method.type "
                "'dpo' only.",
            )


def _classification(req: JobRequest) -> dict[str, Any]:
    enabled = req.compute_classification_metrics
    if enabled in (None, False):
        return {}
    if enabled is not True:
        raise _bad(
            "compute_classification_metrics", "compute_classification_metrics must be a boolean."
        )
    if not req.validation_file:
        raise _bad(
            "validation_file",
            "compute_classification_metrics needs a validation_file to compute the metrics on.",
        )
    n_classes = _int_in(req.classification_n_classes, "classification_n_classes", 2, 10_000)
    positive = req.classification_positive_class
    if positive is not None and not isinstance(positive, str):
        raise _bad(
            "classification_positive_class", "classification_positive_class must be a string."
        )
    if positive is None and n_classes is None:
        raise _bad(
            "classification_n_classes",
            "compute_classification_metrics needs classification_positive_class (binary) or "
            "classification_n_classes (multiclass).",
        )
    if positive is not None and n_classes not in (None, 2):
        raise _bad(
            "classification_positive_class",
            "classification_positive_class is for binary tasks only.",
        )
    betas = req.classification_betas
    if betas is not None:
        if not isinstance(betas, list) or not all(
            isinstance(b, int | float) and not isinstance(b, bool) and b > 0 for b in betas
        ):
            raise _bad(
                "classification_betas", "classification_betas must be a list of positive numbers."
            )
        if positive is None:
            raise _bad(
                "classification_betas", "classification_betas apply to binary classification only."
            )
    return {
        "compute_classification_metrics": True,
        "classification_n_classes": n_classes or (2 if positive is not None else None),
        "classification_positive_class": positive,
        "classification_betas": [float(b) for b in betas] if betas else None,
    }


def _check_positive_class(
    classification: dict[str, Any], training: File, validation: File | None
) -> None:
    """A positive class the data doesn't have is refused, not skipped with a warning event
    after the whole run. Checked against the files' label counts when validation recorded
    them all (a classification-looking file with fewer than 50 distinct completions)."""
    positive = classification.get("classification_positive_class")
    if positive is None:
        return
    labels = known_labels(training, validation)
    if labels is None or positive in labels:
        return
    shown = ", ".join(json.dumps(label, ensure_ascii=False) for label in sorted(labels)[:10])
    raise _bad(
        "classification_positive_class",
        f"classification_positive_class {json.dumps(positive, ensure_ascii=False)} is not a "
        f"completion in the training or validation file; its classes are {shown} (mind the "
        "leading space).",
    )


def _validate_integrations(value: Any) -> list[dict[str, Any]]:
    if value in (None, []):
        return []
    if not isinstance(value, list):
        raise _bad("integrations", "integrations must be a list.")
    for i, item in enumerate(value):
        if not isinstance(item, dict) or item.get("type") != "wandb":
            raise _bad(f"integrations.{i}.type", "Only integrations of type 'wandb' are supported.")
        wandb = item.get("wandb")
        if not isinstance(wandb, dict) or not isinstance(wandb.get("project"), str):
            raise _bad(f"integrations.{i}.wandb.project", "A wandb integration needs a project.")
    return value


METADATA_MAX_PAIRS, METADATA_MAX_KEY, METADATA_MAX_VALUE = 16, 64, 512


def check_metadata_key(key: str) -> None:
    """Metadata keys are 1-64 characters without "__" or brackets, so that every stored key
    can be filtered on (`metadata[key]=value`) and no key reads like an ORM lookup."""
    if not 1 <= len(key) <= METADATA_MAX_KEY or "__" in key or "[" in key or "]" in key:
        raise _bad(
            "metadata",
            f"Invalid metadata key {key[:80]!r}: keys are 1 to {METADATA_MAX_KEY} characters, without '__', "
            "'[' or ']'.",
        )


def _validate_metadata(value: Any) -> dict[str, str] | None:
    """OpenAI's `metadata`: at most 16 pairs of strings, keys ≤ 64 and values ≤ 512 chars."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _bad("metadata", "metadata must be an object of string keys and string values.")
    if len(value) > METADATA_MAX_PAIRS:
        raise _bad(
            "metadata",
            f"metadata may hold at most {METADATA_MAX_PAIRS} pairs, got {len(value)}.",
        )
    for k, v in value.items():
        check_metadata_key(k)
        if not isinstance(v, str):
            raise _bad("metadata", f"metadata[{k!r}] must be a string.")
        if len(v) > METADATA_MAX_VALUE:
            raise _bad(
                "metadata",
                f"metadata[{k!r}] is {len(v)} characters; values may be at most "
                f"{METADATA_MAX_VALUE}.",
            )
    return value


def estimate_cost(base: BaseModel, training: File, n_epochs: int | None) -> Decimal:
    tokens = training.token_count
    cost = base.price_train_per_1k * Decimal(tokens * (n_epochs or 4)) / Decimal(1000)
    return cost.quantize(Decimal("0.0001"))


def _id_prefix(api: str) -> str:
    return "ft-" if api == FineTuneJob.Api.LEGACY else "ftjob-"


def job_create(
    *, organization: Organization, created_by: User | None, req: JobRequest
) -> FineTuneJob:
    """Validate everything, then write the job and its first events and enqueue it.

    Every failure is an ServiceError naming its param, raised before any row is written.
    """
    base, parent = _resolve_model(organization, req.model)
    training = _resolve_file(organization, req.training_file, "training_file", base)
    validation = (
        _resolve_file(organization, req.validation_file, "validation_file", base)
        if req.validation_file
        else None
    )
    n_epochs = _int_in(req.n_epochs, "n_epochs", *N_EPOCHS_RANGE)
    if req.method_type not in FineTuneJob.MethodType.values:
        raise _bad("method.type", "method.type must be 'supervised' or 'dpo'.")
    files = {"training_file": training}
    if validation is not None:
        files["validation_file"] = validation
    _check_method_data(req, files)
    hyperparameters = {
        "n_epochs": n_epochs,
        "batch_size": _int_in(req.batch_size, "batch_size", *BATCH_SIZE_RANGE),
        "learning_rate_multiplier": _float_in(
            req.learning_rate_multiplier, "learning_rate_multiplier", *LRM_RANGE
        ),
        "prompt_loss_weight": _float_in(req.prompt_loss_weight, "prompt_loss_weight", *PLW_RANGE),
    }
    if hyperparameters["prompt_loss_weight"] is None:
        hyperparameters["prompt_loss_weight"] = 0.01  # OpenAI's default since 2022-10
    if req.method_type == FineTuneJob.MethodType.DPO:
        del hyperparameters["prompt_loss_weight"]  # DPO trains the outputs only
        hyperparameters["beta"] = _float_in(
            req.beta, "method.dpo.hyperparameters.beta", *BETA_RANGE
        )
        if req.compute_classification_metrics not in (None, False):
            raise _bad(
                "compute_classification_metrics",
                "Classification metrics are for supervised jobs; a DPO job reports preference "
                "accuracy and reward margin.",
            )
        if req.scaling_forecast is True:
            raise _bad("scaling_forecast", "A scaling forecast is for supervised jobs only.")
    elif req.beta is not None:
        raise _bad("beta", "beta is a hyperparameter of method.type 'dpo'.")
    classification = _classification(req)
    _check_positive_class(classification, training, validation)
    if req.method not in FineTuneJob.Method.values:
        raise _bad("training_method", "training_method must be 'lora' or 'full'.")
    if parent is not None and parent.method != req.method:
        raise _bad(
            "model", f"{parent.name} is a {parent.method} fine-tune; continue it the same way."
        )
    if parent is not None and parent.checkpoint is not None and not has_files(parent.checkpoint):
        raise _bad("model", f"The files of checkpoint {parent.name} were removed by retention.")
    seed = _int_in(req.seed, "seed", 0, SEED_MAX)
    if req.scaling_forecast is not True and req.scaling_forecast is not False:
        raise _bad("scaling_forecast", "scaling_forecast must be a boolean.")
    early_stopping = _early_stopping(req.early_stopping, validation)
    device_class, device_count, no_worker = _devices(req, base)
    resolved = (
        _forecast_hyperparameters(training, validation, hyperparameters, req.method_type)
        if req.scaling_forecast
        else {}
    )

    job = FineTuneJob(
        public_id=random_id(_id_prefix(req.api), 24),
        api=req.api,
        organization=organization,
        created_by=created_by,
        model=req.model or base.name,
        base_model=base,
        parent_model=parent.fine_tuned if parent else None,
        parent_checkpoint=parent.checkpoint if parent else None,
        training_file=training,
        validation_file=validation,
        method=req.method,
        method_type=req.method_type,
        hyperparameters=hyperparameters,
        classification=classification,
        suffix=slug_suffix(req.suffix, api=req.api),
        seed=seed if seed is not None else random.randint(0, SEED_MAX),
        metadata=_validate_metadata(req.metadata),
        integrations=_validate_integrations(req.integrations),
        scaling_forecast=req.scaling_forecast,
        early_stopping=early_stopping,
        device_class=device_class,
        device_count=device_count,
        resolved_hyperparameters=resolved,
        estimated_cost=estimate_cost(base, training, n_epochs),
    )
    with transaction.atomic():
        job.full_clean()
        job.save()
        events.emit(job, "created")
        events.emit(job, "cost", cost=job.estimated_cost)
        events.emit(job, "enqueued", position=queue_position(job))
        if no_worker:
            events.emit(job, "no_worker", message=no_worker)
        # After commit, so the worker never looks for a row that isn't there yet.
        transaction.on_commit(partial(tasks.run_training_job.delay, job.pk))
        if job.scaling_forecast:
            _forecast_children_create(job, resolved or hyperparameters)
    return job


# A class names a Celery queue (`training.<class>`): short, lowercase, no separators Celery or
# Redis would read.
DEVICE_CLASS_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def _devices(req: JobRequest, base: BaseModel) -> tuple[str, int | None, str]:
    """The job's device class (as asked: "" follows its base model's) and count, and a warning
    when no online worker can run it yet. The job is accepted then (workers may start later:
    it waits in its queue); a count more than every announced worker of the class has is a 400,
    since none of those will ever run it."""
    cls = req.device_class
    if cls is None or cls == "":
        cls = ""
    elif not isinstance(cls, str) or not DEVICE_CLASS_RE.match(cls):
        raise _bad(
            "device_class",
            "device_class must be a device class name: lowercase letters, digits, '-' and '_', "
            "up to 40 characters (e.g. 'cuda', 'cuda-80g', 'cpu').",
        )
    count = req.device_count
    if count is not None and (
        isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= DEVICE_COUNT_MAX
    ):
        raise _bad("device_count", f"device_count must be an integer from 1 to {DEVICE_COUNT_MAX}.")
    if count is not None and count > 1 and req.method_type == FineTuneJob.MethodType.DPO:
        # The torchrun path shards supervised batches only (docs/roadmap.md, #13).
        raise _bad("device_count", "A DPO job trains on one device: device_count must be 1.")
    target = cls or base.device_class or settings.TUNERY_DEFAULT_DEVICE_CLASS
    shown = target or "the default"
    workers = workers_for_class(target)
    if workers and count is not None:
        most = max(w.device_count for w in workers)
        if count > most:
            raise _bad(
                "device_count",
                f"device_count {count} is more than any worker of device class {shown} has "
                f"(at most {most}).",
            )
    # Warned when the job asked for its devices, or when this installation's workers announce
    # themselves at all (one whose workers never did would warn on every job for nothing).
    asked = bool(cls) or count is not None
    # Only a worker with enough devices consumes a multi-device job's queue (jobs.routing).
    queue = queue_for_class(target, count)
    runners = [w for w in workers if queue in (w.queues or [])]
    if not any(w.is_online for w in runners) and (asked or any_worker_announced()):
        devices = f" with {count} devices" if count and count > 1 else ""
        return (
            cls,
            count,
            (
                f"No training worker for device class {shown}{devices} is online yet; the job "
                "waits in the queue until one starts."
            ),
        )
    return cls, count, ""


def _early_stopping(value: Any, validation: File | None) -> Any:
    """Tunery's best-checkpoint selection and early stopping (docs/adr/0018): "auto" (or absent),
    true, false, or a patience (evaluations without improvement, 1 to 100). Anything but "auto"
    and false needs a validation file to evaluate on."""
    if value is None or value == "auto":
        return "auto"
    if value is False:
        return False
    if value is not True and (isinstance(value, bool) or not isinstance(value, int)):
        raise _bad(
            "early_stopping",
            "early_stopping must be 'auto', true, false or a patience (an integer from 1 to 100).",
        )
    if value is not True and not 1 <= value <= 100:
        raise _bad("early_stopping", f"early_stopping patience must be 1 to 100, got {value}.")
    if validation is None:
        raise _bad("early_stopping", "early_stopping needs a validation_file to evaluate on.")
    return value


def _forecast_hyperparameters(
    training: File, validation: File | None, requested: dict[str, Any], method_type: str
) -> dict[str, Any]:
    """The values all three runs of a forecast train with, resolved once from the full training
    set, so that data size is the only thing that differs between them.

    Before the training file is validated its size is unknown: then this returns {} and the
    runner resolves the same values from the same file when each run starts.
    """
    if validation is None:
        raise _bad("validation_file", "scaling_forecast needs a validation_file to compare on.")
    n = training.example_count
    if not n:
        return {}
    n_epochs, batch_size, lrm = resolve_hyperparameters(
        n,
        requested["n_epochs"],
        requested["batch_size"],
        requested["learning_rate_multiplier"],
        rule=auto_rule_for(settings.TUNERY_AUTO_HYPERPARAMETERS, method_type),
    )
    # The ¼ run must fill at least one batch of the shared batch size.
    if n < 4 * batch_size:
        raise _bad(
            "training_file",
            f"scaling_forecast trains on a quarter of the training file, which needs at least "
            f"4 × batch_size = {4 * batch_size} examples; {training.public_id} has {n}.",
        )
    return {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": lrm,
        "prompt_loss_weight": requested["prompt_loss_weight"],
    }


def _forecast_children_create(parent: FineTuneJob, hyperparameters: dict[str, Any]) -> None:
    """The ¼ and ½ runs of `parent`'s forecast, queued right after it.

    Their task messages are sent when the parent leaves the queue (`jobs.tasks.send_forecast_runs`):
    sent together with the parent's, a broker that doesn't keep the order of messages sent in
    the same millisecond (the filesystem one) could start a run before the job it measures.

    Same base, files, hyperparameters, seed and classification options as the parent (the
    runner registers no model for them). No integrations and no metadata: a job's W&B project
    and a client's metadata filter are about the job the user asked for, not its measurements.
    """
    children = []
    for fraction in forecast.CHILD_FRACTIONS:
        child = FineTuneJob(
            public_id=random_id(_id_prefix(parent.api), 24),
            api=parent.api,
            organization=parent.organization,
            created_by=parent.created_by,
            model=parent.model,
            base_model=parent.base_model,
            parent_model=parent.parent_model,
            parent_checkpoint=parent.parent_checkpoint,
            training_file=parent.training_file,
            validation_file=parent.validation_file,
            method=parent.method,
            hyperparameters=dict(hyperparameters),
            resolved_hyperparameters=dict(parent.resolved_hyperparameters),
            classification=parent.classification,
            seed=parent.seed,
            # Measured on the same devices as the parent: the three runs are compared.
            device_class=parent.device_class,
            device_count=parent.device_count,
            parent_job=parent,
            data_fraction=fraction,
            estimated_cost=(parent.estimated_cost * Decimal(fraction)).quantize(Decimal("0.0001")),
        )
        child.full_clean()
        child.save()
        events.emit(child, "created")
        events.emit(
            child,
            "engine",
            message=f"Scaling-forecast run for {parent.public_id} on "
            f"{forecast.fraction_label(fraction)} of its training data",
        )
        events.emit(child, "cost", cost=child.estimated_cost)
        events.emit(child, "enqueued", position=queue_position(child))
        children.append(child)
    runs = ", ".join(
        f"{child.public_id} ({forecast.fraction_label(child.data_fraction)})" for child in children
    )
    events.emit(
        parent, "engine", message=f"Scaling forecast: runs on part of the data queued next: {runs}"
    )


def _cancel_one(job: FineTuneJob) -> bool:
    cancelled = FineTuneJob.objects.filter(pk=job.pk, status__in=FineTuneJob.UNFINISHED).update(
        status=FineTuneJob.Status.CANCELLED, finished_at=timezone.now()
    )
    if cancelled:
        events.emit(job, "cancelled")
    return bool(cancelled)


def job_cancel(*, job: FineTuneJob) -> bool:
    """Cancel an unfinished job, and the unfinished runs of its scaling forecast if it has one.

    Returns False if nothing was left to cancel (nothing changes). The forecast runs are queued
    after their parent, so cancelling a parent that has already finished still stops them.
    A running worker sees the new status in its should_stop hook and stops within one step.
    """
    with transaction.atomic():
        cancelled = _cancel_one(job)
        if job.scaling_forecast:
            for child in job.children.filter(status__in=FineTuneJob.UNFINISHED):
                cancelled = _cancel_one(child) or cancelled
    forecast.forecast_record(job=job)
    job.refresh_from_db()
    return cancelled


def form_errors_from(exc: ServiceError | ValidationError) -> dict[str, str]:
    """An ServiceError from job_create as {param: message}, for the browser form."""
    if isinstance(exc, ServiceError):
        return {exc.param or "__all__": exc.message}
    return {k: "; ".join(v) for k, v in exc.message_dict.items()}
