from __future__ import annotations

from django.apps import AppConfig


class ModelsAppConfig(AppConfig):
    name = "models_app"
    default_auto_field = "django.db.models.BigAutoField"
