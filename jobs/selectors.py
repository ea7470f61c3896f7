"""Reads for fine-tune jobs, always scoped to an organization."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Q, QuerySet
from django.db.models.fields.json import KeyTextTransform

from accounts.models import Organization
from jobs.models import Checkpoint, CheckpointComparison, FineTuneJob, JobEvent, TrainingWorker
from jobs.routing import queue_for_class
from models_app.models import BaseModel


def job_list_for_org(*, organization: Organization) -> QuerySet[FineTuneJob]:
    # Everything the serializers and list pages read per job, in a constant number of queries:
    # the rows every job has joined, the optional ones (mostly absent) prefetched. Joining all
    # seven made PostgreSQL plan for 6-7 ms on every lookup (measured with EXPLAIN ANALYZE:
    # execution 0.3 ms); the outer joins are what made planning grow.
    return (
        FineTuneJob.objects.filter(organization=organization)
        .select_related("organization", "created_by", "base_model", "training_file")
        .prefetch_related("validation_file", "result_file", "parent_job")
    )


def job_list_filter_metadata(
    jobs: QuerySet[FineTuneJob], pairs: dict[str, str] | None
) -> QuerySet[FineTuneJob]:
    """Exact match on each metadata key; None selects jobs without metadata.

    A key is only ever a JSON key (KeyTextTransform), never part of a lookup path: a key like
    `a__contains` or `a__b` matches the key literally, nothing else.
    """
    if pairs is None:
        return jobs.filter(metadata__isnull=True)
    for i, (key, value) in enumerate(pairs.items()):
        alias = f"_metadata_{i}"
        jobs = jobs.alias(**{alias: KeyTextTransform(key, "metadata")}).filter(**{alias: value})
    return jobs


def checkpoint_list_for_job(*, job: FineTuneJob) -> QuerySet[Checkpoint]:
    """The checkpoints the API lists and serves as models (jobs.checkpoints: the last 3 epochs)."""
    return Checkpoint.objects.filter(job=job, exposed=True).order_by("-step_number")


def comparison_for_job(*, job: FineTuneJob) -> CheckpointComparison | None:
    return CheckpointComparison.objects.filter(job=job).first()


def queue_position(job: FineTuneJob) -> int:
    """How many queued jobs are ahead of this one (0: next to start)."""
    return FineTuneJob.objects.filter(
        status=FineTuneJob.Status.QUEUED, created_at__lt=job.created_at
    ).count()


def job_find_for_org(*, organization: Organization, job_id: str) -> FineTuneJob | None:
    return job_list_for_org(organization=organization).filter(public_id=job_id).first()


def job_row_for_org(*, organization: Organization, job_id: str) -> FineTuneJob | None:
    """The job's own row and nothing joined: what polled endpoints need to answer a 304 (its
    events, the job page's version). A poll asks dozens of times a second per running job, and
    the seven joins of job_find_for_org cost more to build than the query costs to run."""
    rows = FineTuneJob.objects.filter(organization=organization, public_id=job_id)[:1]
    return next(iter(rows), None)


# Training speed to assume before this installation has finished any job (tokens/s):
# SmolLM2-135M LoRA at the small automatic batch sizes, on a 2-core CPU (docs/benchmarks/
# training.md); a GPU worker is far faster, and the estimate switches to the measured speed
# after the first job.
DEFAULT_TOKENS_PER_SECOND = 120.0
# A data-scaling forecast also trains on 1/4 and 1/2 of the data.
FORECAST_WORK = 1.75


def measured_tokens_per_second(
    *, base_model_id: int, device_class: str | None = None, device_count: int | None = None
) -> tuple[float | None, str]:
    """The speed of the latest finished job on this base model, and where it was measured:
    on the target device class with the same count if such a job exists ("class_count"),
    else on that class ("class"), else on any ("any"; today's behaviour without a class).
    A GPU trains many times faster than a CPU: one class's speed says little of another's."""
    finished = FineTuneJob.objects.filter(
        base_model_id=base_model_id,
        status=FineTuneJob.Status.SUCCEEDED,
        tokens_per_second__isnull=False,
    ).order_by("-finished_at")
    scopes: list[tuple[str, QuerySet[FineTuneJob]]] = []
    if device_class is not None:
        # A job that asked for no class ran on its base model's (the same for all of these).
        base_class = (
            BaseModel.objects.filter(pk=base_model_id)
            .values_list("device_class", flat=True)
            .first()
            or settings.TUNERY_DEFAULT_DEVICE_CLASS
        )
        on_class = Q(device_class=device_class)
        if base_class == device_class:
            on_class |= Q(device_class="")
        same_class = finished.filter(on_class)
        if device_count is not None:
            # No count asked: one process, unless the worker's admin set more.
            counted = Q(device_count=device_count)
            if device_count == 1:
                counted |= Q(device_count=None)
            scopes.append(("class_count", same_class.filter(counted)))
        scopes.append(("class", same_class))
    scopes.append(("any", finished))
    for scope, jobs in scopes:
        speed = jobs.values_list("tokens_per_second", flat=True).first()
        if speed is not None:
            return speed, scope
    return None, "any"


def workers_for_class(device_class: str) -> list[TrainingWorker]:
    """The announced training workers (online or gone, until swept) that consume the class's
    queue: those that can run its jobs. A deployment has a handful, so the queue is matched
    here rather than in JSON lookups SQLite lacks."""
    queue = queue_for_class(device_class)
    return [w for w in TrainingWorker.objects.all() if queue in (w.queues or [])]


def any_worker_announced() -> bool:
    return TrainingWorker.objects.exists()


def worker_find(*, name: str) -> TrainingWorker | None:
    """The announcement of the worker that runs (or ran) a job: FineTuneJob.worker."""
    return TrainingWorker.objects.filter(name=name).first() if name else None


def job_preflight(
    *,
    examples: int,
    tokens: int,
    base_model_id: int,
    n_epochs: int | None,
    batch_size: int | None,
    learning_rate_multiplier: float | None,
    scaling_forecast: bool = False,
    device_class: str | None = None,
    device_count: int | None = None,
    objective: str = "supervised",
    selecting: bool = False,
) -> dict[str, Any]:
    """The auto hyperparameters and a time estimate, shown on the create form. `selecting`: the
    job would keep its best checkpoint (jobs.runner.early_stopping), which raises the rule's
    epochs on some sizes."""
    import engine

    selecting = selecting and not scaling_forecast  # a forecast's runs never select
    n_epochs, batch_size, lrm = engine.resolve_hyperparameters(
        examples,
        n_epochs,
        batch_size,
        learning_rate_multiplier,
        rule=engine.spec.auto_rule_for(settings.TUNERY_AUTO_HYPERPARAMETERS, objective),
        selecting=selecting,
    )
    measured, scope = measured_tokens_per_second(
        base_model_id=base_model_id, device_class=device_class, device_count=device_count
    )
    speed = measured or DEFAULT_TOKENS_PER_SECOND
    to_train = round(tokens * n_epochs * (FORECAST_WORK if scaling_forecast else 1))
    return {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": lrm,
        "selecting": selecting,
        "tokens_to_train": to_train,
        "tokens_per_second": speed,
        "speed_is_measured": measured is not None,
        # "class_count" | "class": measured on the target devices; "any": on whatever ran last.
        "speed_scope": scope,
        "scaling_forecast": scaling_forecast,
        "seconds": to_train / speed if speed else None,
    }


def job_list_filtered(
    *, organization: Organization, status: str = "", model: str = "", creator: str = "", q: str = ""
) -> QuerySet[FineTuneJob]:
    """The jobs list's filters; each is an exact match on a known value, `q` a substring."""
    jobs = job_list_for_org(organization=organization)
    if status in FineTuneJob.Status.values:
        jobs = jobs.filter(status=status)
    if model:
        jobs = jobs.filter(base_model__name=model)
    if creator:
        jobs = jobs.filter(created_by__username=creator)
    if q:
        jobs = jobs.filter(
            Q(public_id__icontains=q) | Q(suffix__icontains=q) | Q(fine_tuned_model__icontains=q)
        )
    return jobs


def job_bases_for_org(*, organization: Organization) -> list[str]:
    return sorted(
        set(
            FineTuneJob.objects.filter(organization=organization).values_list(
                "base_model__name", flat=True
            )
        )
    )


def job_creators_for_org(*, organization: Organization) -> list[str]:
    return sorted(
        {
            name
            for name in FineTuneJob.objects.filter(organization=organization).values_list(
                "created_by__username", flat=True
            )
            if name
        }
    )


def job_events_version(*, job: FineTuneJob) -> tuple[int | None, int]:
    """(newest event id, number of events): changes whenever the job's event list does (events
    are only ever appended, or deleted with their job). One indexed aggregate."""
    row = JobEvent.objects.filter(job=job).aggregate(last=Max("id"), n=Count("id"))
    return row["last"], row["n"]


def job_messages(*, job: FineTuneJob) -> QuerySet[JobEvent]:
    """The job's message events, oldest first (the legacy events list and the job page)."""
    return job.events.filter(type=JobEvent.Type.MESSAGE).order_by("id")


def job_events_newest_first(*, job: FineTuneJob) -> QuerySet[JobEvent]:
    """Every event of the job, messages and metrics, as the current API pages them."""
    return job.events.order_by("-id")


def jobs_of_results_files(*, file_ids: list[int]) -> dict[int, FineTuneJob]:
    """The job that wrote each results file, by the file's id (for links beside the file)."""
    jobs = FineTuneJob.objects.filter(result_file_id__in=file_ids).only(
        "public_id", "result_file_id"
    )
    return {job.result_file_id: job for job in jobs if job.result_file_id is not None}


def job_page_version(*, job: FineTuneJob, checkpoints: list[Checkpoint]) -> tuple[Any, ...]:
    """Everything the job page's live partial shows besides the job row itself: its events,
    checkpoints (`checkpoint_list_for_job`'s rows, which the caller reads once for the page
    too), a forecast's runs and the queue position."""
    rows = [tuple(getattr(c, f.attname) for f in c._meta.concrete_fields) for c in checkpoints]
    children = (  # only a forecast parent has runs of its own
        list(job.children.order_by("pk").values_list("pk", "status", "step", "final_metrics"))
        if job.scaling_forecast
        else []
    )
    position = queue_position(job) if job.status == FineTuneJob.Status.QUEUED else None
    return (job_events_version(job=job), rows, children, position)
