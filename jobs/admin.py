from __future__ import annotations

from django.contrib import admin

from common.admin import OrgScopedAdmin
from jobs.models import FineTuneJob, JobEvent


class JobEventInline(admin.TabularInline):  # type: ignore[type-arg]
    model = JobEvent
    fields = ["created_at", "level", "type", "message"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(FineTuneJob)
class FineTuneJobAdmin(OrgScopedAdmin):
    list_display = ["public_id", "organization", "model", "status", "progress", "created_at"]
    list_filter = ["status", "api", "method"]
    search_fields = ["public_id", "fine_tuned_model"]
    readonly_fields = [f.name for f in FineTuneJob._meta.fields]
    inlines = [JobEventInline]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return False  # jobs are created through the API or the create form (job_create)
