from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.contrib.auth.models import User
from django.http import HttpRequest

from accounts.models import (
    ApiKey,
    Invitation,
    Membership,
    Organization,
    WebhookDelivery,
    WebhookEndpoint,
)
from common.admin import OrgScopedAdmin, owned_org_ids


@admin.register(Organization)
class OrganizationAdmin(OrgScopedAdmin[Organization]):
    org_field = "pk"
    list_display = ["name", "slug", "public_id", "wandb_enabled", "created_at"]
    search_fields = ["name", "slug"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return request.user.is_superuser

    def has_delete_permission(self, request: HttpRequest, obj: Organization | None = None) -> bool:
        return request.user.is_superuser


class MembershipByUsernameForm(forms.ModelForm[Membership]):
    """An owner adds a member by exact username: no list of the instance's users to pick from
    (that would show every account, across organizations). New people get an invitation."""

    username = forms.CharField(
        help_text="The exact username of an existing account. To add someone new, invite them "
        "from the Settings page."
    )

    class Meta:
        model = Membership
        fields = ["organization", "role"]

    def clean_username(self) -> User:
        username = self.cleaned_data["username"].strip()
        user = User.objects.filter(username=username).first()
        if user is None:
            raise forms.ValidationError(
                f"No user named {username!r}. Invite them from the Settings page instead."
            )
        return user

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        user, org = data.get("username"), data.get("organization")
        if user and org and Membership.objects.filter(organization=org, user=user).exists():
            raise forms.ValidationError(f"{user.username} is already a member of {org}.")
        return data

    def save(self, commit: bool = True) -> Membership:
        self.instance.user = self.cleaned_data["username"]
        return super().save(commit=commit)


@admin.register(Membership)
class MembershipAdmin(OrgScopedAdmin[Membership]):
    list_display = ["user", "organization", "role", "created_at"]
    list_filter = ["role"]

    def get_form(
        self,
        request: HttpRequest,
        obj: Membership | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> type[forms.ModelForm[Membership]]:
        if obj is None and not request.user.is_superuser:
            kwargs["form"] = MembershipByUsernameForm
            kwargs["fields"] = ["username", "organization", "role"]
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None and not request.user.is_superuser:
            return ["username", "organization", "role"]
        return super().get_fields(request, obj)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        # Who a membership belongs to never changes; only its role does.
        return ["user"] if obj is not None and not request.user.is_superuser else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = User.objects.filter(
                memberships__organization_id__in=owned_org_ids(request)
            ).distinct()
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


@admin.register(Invitation)
class InvitationAdmin(OrgScopedAdmin[Invitation]):
    list_display = ["organization", "email", "role", "created_by", "expires_at", "accepted_at"]
    # A nullable FK isn't joined by default: one query per row without this.
    list_select_related = ["organization", "created_by"]
    list_filter = ["role"]
    readonly_fields = [f.name for f in Invitation._meta.fields if f.name != "revoked_at"]
    exclude = ["hashed_token"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # the Settings page creates them: it can show the link once


@admin.register(ApiKey)
class ApiKeyAdmin(OrgScopedAdmin[ApiKey]):
    list_display = ["name", "prefix", "organization", "created_by", "last_used_at", "revoked_at"]
    # A nullable FK isn't joined by default: one query per row without this.
    list_select_related = ["organization", "created_by"]
    readonly_fields = ["prefix", "last_used_at", "created_at"]
    fields = ["organization", "created_by", "name", "prefix", "revoked_at", "last_used_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Keys are created on the settings page or by `create_api_key`, where the secret
        # can be shown once; the admin has nowhere safe to show it.
        return False


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(OrgScopedAdmin[WebhookEndpoint]):
    list_display = ["name", "url", "organization", "created_at", "updated_at"]
    # Never the secret: it is shown once, on the settings page, when created or rotated.
    fields = ["organization", "public_id", "name", "url", "event_types", "updated_at"]
    readonly_fields = ["public_id", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # created on the settings page or by the API, which show the secret once


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(OrgScopedAdmin[WebhookDelivery]):
    org_field = "endpoint__organization"
    list_display = ["event_type", "endpoint", "status", "status_code", "attempts", "created_at"]
    list_filter = ["status", "event_type"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: WebhookDelivery | None = None
    ) -> bool:
        return False  # a log: viewed (with Close, not a Save that saves nothing), never edited
