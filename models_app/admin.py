"""Admin: base models (superusers and org owners), fine-tunes (org-scoped, deleted properly)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import Membership
from common.admin import OrgScopedAdmin, owned_org_ids
from models_app import services
from models_app.models import BaseModel, FineTunedModel, ModelPermission, layer_names


class BaseModelForm(forms.ModelForm[BaseModel]):
    class Meta:
        model = BaseModel
        fields = [
            "name", "display_name", "source", "aliases", "context_length", "has_chat_template",
            "base_lr_lora", "base_lr_full", "lora_rank", "lora_alpha", "lora_target_modules",
            "warmup_ratio", "price_train_per_1k", "price_generate_per_1k", "enabled",
        ]  # fmt: skip

    def clean_lora_target_modules(self) -> str:
        names = layer_names(self.cleaned_data["lora_target_modules"])
        # Module names as peft matches them: q_proj, model.layers.0.mlp.up_proj…
        bad = [n for n in names if not all(p.isidentifier() or p.isdigit() for p in n.split("."))]
        if bad:
            raise ValidationError(
                f"Not a layer name: {', '.join(bad)}. Give names such as q_proj,v_proj."
            )
        return ",".join(names)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        aliases = data.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ValidationError({"aliases": 'A JSON list of names, e.g. ["ada", "curie"].'})
        if "name" in data:
            services.base_model_validate_names(
                name=data["name"],
                aliases=aliases,
                instance=self.instance if self.instance.pk else None,
            )
        if "source" in data:
            services.base_model_inspect_source(data["source"])
        return data


@admin.register(BaseModel)
class BaseModelAdmin(admin.ModelAdmin[BaseModel]):
    """Base models are shared by every org: superusers and org owners (staff) manage them."""

    form = BaseModelForm
    list_display = ["name", "display_name", "context_length", "has_chat_template", "enabled"]
    search_fields = ["name", "display_name"]

    def _allowed(self, request: HttpRequest) -> bool:
        user = request.user
        if user.is_superuser:
            return True
        return bool(user.is_active and user.is_staff and owned_org_ids(request))

    def has_module_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return self._allowed(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self._allowed(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Jobs and fine-tunes point at bases (PROTECT); disable a base instead of deleting it.
        return bool(request.user.is_superuser)


@admin.register(FineTunedModel)
class FineTunedModelAdmin(OrgScopedAdmin[FineTunedModel]):
    list_display = ["name", "organization", "base", "method", "created_at", "deleted_at"]
    list_filter = ["method", "base"]
    search_fields = ["name"]
    readonly_fields = [f.name for f in FineTunedModel._meta.fields]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).filter(deleted_at=None)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # fine-tunes come from jobs

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        # The admin is reachable only by owners (OrgScopedAdmin) and superusers.
        services.model_delete(model=obj, by_role=Membership.Role.OWNER)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        for model in queryset:
            services.model_delete(model=model, by_role=Membership.Role.OWNER)


@admin.register(ModelPermission)
class ModelPermissionAdmin(OrgScopedAdmin[ModelPermission]):
    """Grants an owner made (revoking one here ends the other org's access at once)."""

    list_display = ["model_name", "grantee", "organization", "created_at"]
    readonly_fields = [f.name for f in ModelPermission._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # granted through the API, which checks the model and the organizations

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
