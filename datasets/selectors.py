"""Reads for files, always scoped to an organization."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Organization
from datasets.models import File


def file_list_for_org(*, organization: Organization) -> QuerySet[File]:
    return File.objects.filter(organization=organization)


def file_find_for_org(*, organization: Organization, file_id: str) -> File | None:
    """None for an unknown id or another org's file: the caller answers 404 either way."""
    return file_list_for_org(organization=organization).filter(public_id=file_id).first()
