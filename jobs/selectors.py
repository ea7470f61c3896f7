"""Reads for fine-tune jobs, always scoped to an organization."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Organization
from jobs.models import FineTuneJob


def job_list_for_org(*, organization: Organization) -> QuerySet[FineTuneJob]:
    return FineTuneJob.objects.filter(organization=organization).select_related(
        "base_model", "training_file", "validation_file", "result_file"
    )


def queue_position(job: FineTuneJob) -> int:
    """How many queued jobs are ahead of this one (0: next to start)."""
    return FineTuneJob.objects.filter(
        status=FineTuneJob.Status.QUEUED, created_at__lt=job.created_at
    ).count()


def job_find_for_org(*, organization: Organization, job_id: str) -> FineTuneJob | None:
    return job_list_for_org(organization=organization).filter(public_id=job_id).first()


# Training speed to assume before this installation has finished any job (tokens/s):
# SmolLM2-135M LoRA at the small automatic batch sizes, on a 2-core CPU (docs/benchmarks/
# training.md); a GPU worker is far faster, and the estimate switches to the measured speed
# after the first job.
DEFAULT_TOKENS_PER_SECOND = 120.0
# A data-scaling forecast also trains on 1/4 and 1/2 of the data.
FORECAST_WORK = 1.75


def measured_tokens_per_second(*, base_model_id: int) -> float | None:
    """The speed of the latest finished job on this base model: what this worker really does."""
    job = (
        FineTuneJob.objects.filter(
            base_model_id=base_model_id,
            status=FineTuneJob.Status.SUCCEEDED,
            tokens_per_second__isnull=False,
        )
        .order_by("-finished_at")
        .first()
    )
    return job.tokens_per_second if job else None


def job_preflight(
    *,
    examples: int,
    tokens: int,
    base_model_id: int,
    n_epochs: int | None,
    batch_size: int | None,
    learning_rate_multiplier: float | None,
    scaling_forecast: bool = False,
) -> dict[str, object]:
    """The auto hyperparameters and a time estimate, shown on the create form."""
    import engine

    n_epochs, batch_size, lrm = engine.resolve_hyperparameters(
        examples, n_epochs, batch_size, learning_rate_multiplier
    )
    measured = measured_tokens_per_second(base_model_id=base_model_id)
    speed = measured or DEFAULT_TOKENS_PER_SECOND
    to_train = round(tokens * n_epochs * (FORECAST_WORK if scaling_forecast else 1))
    return {
        "n_epochs": n_epochs,
        "batch_size": batch_size,
        "learning_rate_multiplier": lrm,
        "tokens_to_train": to_train,
        "tokens_per_second": speed,
        "speed_is_measured": measured is not None,
        "scaling_forecast": scaling_forecast,
        "seconds": to_train / speed if speed else None,
    }
