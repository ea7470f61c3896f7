from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from common.admin import OrgScopedAdmin
from jobs.models import FineTuneJob, JobEvent, RetentionPolicy


class JobEventInline(admin.TabularInline[JobEvent, FineTuneJob]):
    model = JobEvent
    fields = readonly_fields = ("created_at", "level", "type", "message")
    extra = 0
    can_delete = False


@admin.register(FineTuneJob)
class FineTuneJobAdmin(OrgScopedAdmin[FineTuneJob]):
    list_display = [
        "public_id",
        "organization",
        "model",
        "status",
        "progress_shown",
        "worker",
        "heartbeat_at",
        "created_at",
    ]
    list_filter = ["status", "api", "method"]
    search_fields = ["public_id", "fine_tuned_model"]
    # Progress as a percentage, not 0.013020833333333334.
    readonly_fields = [
        "progress_shown" if f.name == "progress" else f.name for f in FineTuneJob._meta.fields
    ]
    exclude = ["progress"]
    inlines = [JobEventInline]

    @admin.display(description="progress", ordering="progress")
    def progress_shown(self, job: FineTuneJob) -> str:
        return f"{job.progress:.0%}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # jobs are created through the API or the create form (job_create)


@admin.register(RetentionPolicy)
class RetentionPolicyAdmin(admin.ModelAdmin[RetentionPolicy]):
    """One instance-wide row (jobs.retention.policy creates it): superusers edit it."""

    list_display = ["__str__", "work_days", "checkpoint_days", "file_cache_max_bytes"]

    def has_module_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.is_superuser)

    def has_view_permission(self, request: HttpRequest, obj: RetentionPolicy | None = None) -> bool:
        return bool(request.user.is_superuser)

    def has_change_permission(
        self, request: HttpRequest, obj: RetentionPolicy | None = None
    ) -> bool:
        return bool(request.user.is_superuser)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the one row exists from first use (see changelist_view)

    def has_delete_permission(
        self, request: HttpRequest, obj: RetentionPolicy | None = None
    ) -> bool:
        return False

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        from jobs.retention import policy

        policy()  # so that there is always the one row to edit
        return super().changelist_view(request, extra_context)
