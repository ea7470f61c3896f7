"""OpenAI's model object."""

from __future__ import annotations

from typing import Any

from models_app.models import BaseModel, FineTunedModel


def base_model_json(base: BaseModel) -> dict[str, Any]:
    return {
        "id": base.name,
        "object": "model",
        "created": int(base.created_at.timestamp()),
        "owned_by": "tunery",
        "root": base.name,
        "parent": None,
    }


def fine_tuned_model_json(model: FineTunedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.created_at.timestamp()),
        "owned_by": model.organization.slug,
        "root": model.base.name,
        "parent": model.base.name,
    }
