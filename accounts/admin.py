from __future__ import annotations

from django.contrib import admin

from accounts.models import ApiKey, Membership, Organization
from common.admin import OrgScopedAdmin


@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin):
    org_field = "pk"
    list_display = ["name", "slug", "public_id", "wandb_enabled", "created_at"]
    search_fields = ["name", "slug"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None) -> bool:  # type: ignore[no-untyped-def]
        return request.user.is_superuser


@admin.register(Membership)
class MembershipAdmin(OrgScopedAdmin):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]


@admin.register(ApiKey)
class ApiKeyAdmin(OrgScopedAdmin):
    list_display = ["name", "prefix", "organization", "created_by", "last_used_at", "revoked_at"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]
    fields = ["organization", "created_by", "name", "prefix", "revoked_at", "last_used_at"]

    def has_add_permission(self, request) -> bool:  # type: ignore[no-untyped-def]
        # Keys are created on the settings page or by `create_api_key`, where the secret
        # can be shown once; the admin has nowhere safe to show it.
        return False
