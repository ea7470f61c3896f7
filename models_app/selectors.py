"""Reads for the model registry. Fine-tunes are scoped to an org; base models are shared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum
from django.shortcuts import get_object_or_404

from accounts.models import Organization
from jobs.models import Checkpoint, FineTuneJob, JobEvent
from models_app.models import BaseModel, FineTunedModel, ModelPermission, UsageRecord


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


def checkpoint_find_for_org(*, organization: Organization, name: str) -> Checkpoint | None:
    """The org's own exposed checkpoint named `ft:…:ckpt-step-N`."""
    return (
        Checkpoint.objects.filter(name=name, exposed=True, job__organization=organization)
        .select_related("job__base_model", "job__organization")
        .first()
    )


@dataclass(frozen=True)
class Usable:
    """A fine-tuned model or checkpoint an org may use: its own, or one shared with it."""

    name: str
    fine_tuned: FineTunedModel | None
    checkpoint: Checkpoint | None
    owner: Organization

    @property
    def base(self) -> BaseModel:
        if self.fine_tuned is not None:
            return self.fine_tuned.base
        assert self.checkpoint is not None
        return self.checkpoint.job.base_model

    @property
    def method(self) -> str:
        if self.fine_tuned is not None:
            return self.fine_tuned.method
        assert self.checkpoint is not None
        return self.checkpoint.job.method

    def shared_with(self, organization: Organization) -> bool:
        return self.owner.pk != organization.pk


def usable_model_find(*, organization: Organization, name: str) -> Usable | None:
    """Own live fine-tune, own exposed checkpoint, or one of those shared with the org.

    None otherwise: another org's unshared model looks exactly like a missing one.
    """
    own = model_find_for_org(organization=organization, name=name)
    if own is not None:
        return Usable(name, own, None, own.organization)
    checkpoint = checkpoint_find_for_org(organization=organization, name=name)
    if checkpoint is not None:
        return Usable(name, None, checkpoint, checkpoint.job.organization)
    grant = (
        ModelPermission.objects.filter(grantee=organization, model_name=name)
        .select_related(
            "organization",
            "fine_tuned_model__base",
            "fine_tuned_model__organization",
            "checkpoint__job__base_model",
        )
        .first()
    )
    if grant is None:
        return None
    if grant.fine_tuned_model is not None and grant.fine_tuned_model.deleted_at is None:
        return Usable(name, grant.fine_tuned_model, None, grant.organization)
    if grant.checkpoint is not None and grant.checkpoint.exposed:
        return Usable(name, None, grant.checkpoint, grant.organization)
    return None


def checkpoint_list_for_org(*, organization: Organization) -> QuerySet[Checkpoint]:
    """The org's exposed checkpoints, newest first (the playground lists them as models)."""
    return (
        Checkpoint.objects.filter(job__organization=organization, exposed=True)
        .select_related("job__base_model")
        .order_by("-created_at", "-step_number")
    )


def grants_received(*, organization: Organization) -> QuerySet[ModelPermission]:
    """Every model or checkpoint shared with this org (some may have been deleted since)."""
    return ModelPermission.objects.filter(grantee=organization).select_related(
        "organization",
        "fine_tuned_model__base",
        "fine_tuned_model__organization",
        "checkpoint__job__base_model",
    )


def models_shared_with(*, organization: Organization) -> QuerySet[ModelPermission]:
    """Live fine-tuned models other orgs shared with this one (for /v1/models)."""
    return ModelPermission.objects.filter(
        grantee=organization, fine_tuned_model__isnull=False, fine_tuned_model__deleted_at=None
    ).select_related("fine_tuned_model__base", "fine_tuned_model__organization")


def permission_list_for_model(
    *, organization: Organization, model_name: str
) -> QuerySet[ModelPermission]:
    """The grants an owner made on one of its models or checkpoints."""
    return ModelPermission.objects.filter(
        organization=organization, model_name=model_name
    ).select_related("grantee")


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
