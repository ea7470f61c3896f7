from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from common.admin import OrgScopedAdmin, owned_org_ids
from jobs.models import FineTuneJob, JobEvent, RetentionPolicy, TrainingWorker


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

    list_display = [
        "__str__",
        "work_days",
        "checkpoint_days",
        "export_days",
        "file_cache_max_bytes",
    ]

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


@admin.register(TrainingWorker)
class TrainingWorkerAdmin(admin.ModelAdmin[TrainingWorker]):
    """The training workers and their devices, as they announced themselves (jobs.fleet).

    Read-only: the workers write these rows. Instance-wide (workers serve every org), shown to
    superusers and to the staff owners who see the admin at all, as every other page is."""

    list_display = [
        "name",
        "device_class",
        "devices_shown",
        "queues",
        "online",
        "last_seen_at",
        "started_at",
    ]
    list_filter = ["device_class", "device_kind"]
    search_fields = ["name", "hostname"]
    readonly_fields = [f.name for f in TrainingWorker._meta.fields]

    @admin.display(description="devices")
    def devices_shown(self, worker: TrainingWorker) -> str:
        return worker.devices_shown

    @admin.display(description="online", boolean=True)
    def online(self, worker: TrainingWorker) -> bool:
        return worker.is_online

    def _may_see(self, request: HttpRequest) -> bool:
        user = request.user
        return bool(user.is_superuser) or (
            user.is_active and user.is_staff and bool(owned_org_ids(request))
        )

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._may_see(request)

    def has_view_permission(self, request: HttpRequest, obj: TrainingWorker | None = None) -> bool:
        return self._may_see(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: TrainingWorker | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: TrainingWorker | None = None
    ) -> bool:
        return False
