"""Reads for files, always scoped to an organization."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Organization
from datasets.models import File


def file_list_for_org(*, organization: Organization) -> QuerySet[File]:
    """The org's files. A deleted file whose row stays for the jobs that refer to it
    (`deleted_at` set, see services.file_delete) is gone for every caller of this."""
    return File.objects.filter(organization=organization, deleted_at__isnull=True)


def file_find_for_org(*, organization: Organization, file_id: str) -> File | None:
    """None for an unknown id, another org's file or a deleted one: the caller answers 404."""
    return file_list_for_org(organization=organization).filter(public_id=file_id).first()
