"""Org-scoped Django admin: an owner sees and edits only their own organizations' objects."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from accounts.models import Membership


def owned_org_ids(request: HttpRequest) -> list[int]:
    return list(
        Membership.objects.filter(user=request.user, role=Membership.Role.OWNER).values_list(
            "organization_id", flat=True
        )
    )


class OrgScopedAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Superusers see everything; owners (staff users) see their orgs' rows; others nothing.

    `org_field` is the lookup from the model to its Organization.
    """

    org_field = "organization"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        return qs.filter(**{f"{self.org_field}__in": owned_org_ids(request)})

    def _is_owner(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff and bool(owned_org_ids(request))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_view_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # Owners may only point objects at their own organizations.
        if db_field.name == "organization" and not request.user.is_superuser:
            from accounts.models import Organization

            kwargs["queryset"] = Organization.objects.filter(pk__in=owned_org_ids(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
