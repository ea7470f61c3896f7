"""Admin: files, org-scoped, read-only (uploads come through the API and the pages)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from common.admin import OrgScopedAdmin
from common.errors import ServiceError
from datasets import services
from datasets.models import File


@admin.register(File)
class FileAdmin(OrgScopedAdmin[File]):
    list_display = ["public_id", "filename", "organization", "purpose", "status", "bytes"]
    list_display += ["error_count", "created_at"]
    list_filter = ["purpose", "status", "format"]
    search_fields = ["public_id", "filename"]
    readonly_fields = [f.name for f in File._meta.fields]
    list_select_related = ["organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a file needs its blob stored and validated: upload it instead

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        # Through the service, so the blob goes too and files in use by a running job stay.
        try:
            services.file_delete(file=obj)
        except ServiceError as exc:
            self.message_user(request, exc.message, messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for file in queryset:
            self.delete_model(request, file)
