"""Reads for the model registry. Fine-tunes are scoped to an org; base models are shared."""

from __future__ import annotations

from django.db.models import Q, QuerySet

from accounts.models import Organization
from models_app.models import BaseModel, FineTunedModel


def base_model_list() -> QuerySet[BaseModel]:
    return BaseModel.objects.filter(enabled=True)


def base_model_find(*, name: str) -> BaseModel | None:
    """A base model by its name or one of its aliases."""
    for base in base_model_list():
        if name == base.name or name in (base.aliases or []):
            return base
    return None


def model_list_for_org(*, organization: Organization) -> QuerySet[FineTunedModel]:
    return FineTunedModel.objects.filter(organization=organization, deleted_at=None).select_related(
        "base", "job"
    )


def model_find_for_org(*, organization: Organization, name: str) -> FineTunedModel | None:
    """The org's live fine-tune with this name; None for unknown or another org's (no leak)."""
    return model_list_for_org(organization=organization).filter(Q(name=name)).first()
