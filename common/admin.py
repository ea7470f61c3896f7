"""Org-scoped Django admin: an owner sees and edits only their own organizations' objects."""

from __future__ import annotations

from typing import Any, TypeVar

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from accounts.models import Membership

_M = TypeVar("_M", bound=Model)


def owned_org_ids(request: HttpRequest) -> list[int]:
    # Asked by every permission check of a changelist (dozens a page): once per request.
    cached: list[int] | None = getattr(request, "_tunery_owned_org_ids", None)
    if not request.user.is_authenticated:
        return []
    if cached is None:
        cached = list(
            Membership.objects.filter(user=request.user, role=Membership.Role.OWNER).values_list(
                "organization_id", flat=True
            )
        )
        request._tunery_owned_org_ids = cached  # type: ignore[attr-defined]  # per-request memo
    return cached


class OrgScopedAdmin(admin.ModelAdmin[_M]):
    """Superusers see everything; owners (staff users) see their orgs' rows; others nothing.

    `org_field` is the lookup from the model to its Organization.
    """

    org_field = "organization"

    def get_queryset(self, request: HttpRequest) -> QuerySet[_M]:
        qs = super().get_queryset(request)
        if request.user.is_superuser:
            return qs
        return qs.filter(**{f"{self.org_field}__in": owned_org_ids(request)})

    def _is_owner(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_staff and bool(owned_org_ids(request))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_view_permission(self, request: HttpRequest, obj: _M | None = None) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_change_permission(self, request: HttpRequest, obj: _M | None = None) -> bool:
        if self._all_read_only():
            return False  # a view page with Close, not a Save button that saves nothing
        return request.user.is_superuser or self._is_owner(request)

    def _all_read_only(self) -> bool:
        fields = {f.name for f in self.model._meta.fields if f.editable}
        return bool(fields) and fields <= {*self.readonly_fields, *(self.exclude or ())}

    def has_delete_permission(self, request: HttpRequest, obj: _M | None = None) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser or self._is_owner(request)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # Owners may only point objects at their own organizations.
        if db_field.name == "organization" and not request.user.is_superuser:
            from accounts.models import Organization

            kwargs["queryset"] = Organization.objects.filter(pk__in=owned_org_ids(request))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
