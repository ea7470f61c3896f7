"""Reads for the model registry. Fine-tunes are scoped to an org; base models are shared."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.shortcuts import get_object_or_404

from accounts.models import Organization
from jobs.models import FineTuneJob, JobEvent
from models_app.models import BaseModel, FineTunedModel, UsageRecord


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.filter(enabled=True)


def base_model_find(*, name: str) -> BaseModel | None:
    """A base model by its name or one of its aliases."""
    exact = base_model_list().filter(name=name).first()
    if exact is not None:
        return exact
    # Aliases live in a JSON list; registries are small, so match them in Python (portable
    # across SQLite and PostgreSQL, unlike JSON containment lookups).
    for base in base_model_list():
        if name in (base.aliases or []):
            return base
    return None


def model_list_for_org(*, organization: Organization) -> QuerySet[FineTunedModel]:
    return FineTunedModel.objects.filter(organization=organization, deleted_at=None).select_related(
        "base", "job", "organization"
    )


def model_find_for_org(*, organization: Organization, name: str) -> FineTunedModel | None:
    """The org's live fine-tune with this name; None for unknown or another org's (no leak)."""
    return model_list_for_org(organization=organization).filter(Q(name=name)).first()


def model_get_for_org(*, organization: Organization, name: str) -> FineTunedModel:
    """For browser views: 404 for unknown, deleted or another org's fine-tunes."""
    return get_object_or_404(model_list_for_org(organization=organization), name=name)


def usage_totals_by_model(*, organization: Organization) -> dict[str, dict[str, int]]:
    """{model name: {requests, prompt_tokens, completion_tokens}} over all time."""
    rows = (
        UsageRecord.objects.filter(organization=organization)
        .values("model_name")
        .annotate(
            requests_sum=Sum("requests"),
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
        )
    )
    return {
        r["model_name"]: {
            "requests": r["requests_sum"] or 0,
            "prompt_tokens": r["prompt_sum"] or 0,
            "completion_tokens": r["completion_sum"] or 0,
        }
        for r in rows
    }


def usage_by_day(
    *, organization: Organization, model_name: str, days: int = 30
) -> list[dict[str, Any]]:
    """Tokens in and out per day (newest first), summed over keys and users."""
    rows = (
        UsageRecord.objects.filter(organization=organization, model_name=model_name)
        .values("day")
        .annotate(
            requests_sum=Sum("requests"),
            prompt_sum=Sum("prompt_tokens"),
            completion_sum=Sum("completion_tokens"),
            keys=Count("api_key", distinct=True),
        )
        .order_by("-day")[:days]
    )
    return [
        {
            "day": r["day"],
            "requests": r["requests_sum"],
            "prompt_tokens": r["prompt_sum"],
            "completion_tokens": r["completion_sum"],
            "keys": r["keys"],
        }
        for r in rows
    ]


def job_final_metrics(*, job: FineTuneJob) -> dict[str, float]:
    """The last reported metrics row of a job (loss, accuracies, classification metrics)."""
    event = JobEvent.objects.filter(job=job, type=JobEvent.Type.METRICS).order_by("-id").first()
    if event is None or not isinstance(event.data, dict):
        return {}
    row = event.data.get("results") or event.data
    return {
        key: value
        for key, value in row.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "total_steps"
    }
