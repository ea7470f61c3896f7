"""Reads for fine-tune jobs, always scoped to an organization."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Organization
from jobs.models import FineTuneJob


def job_list_for_org(*, organization: Organization) -> QuerySet[FineTuneJob]:
    return FineTuneJob.objects.filter(organization=organization).select_related(
        "base_model", "training_file", "validation_file", "result_file"
    )


def job_find_for_org(*, organization: Organization, job_id: str) -> FineTuneJob | None:
    return job_list_for_org(organization=organization).filter(public_id=job_id).first()
