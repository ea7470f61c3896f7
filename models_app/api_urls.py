from __future__ import annotations

from django.urls import path

from models_app import api

urlpatterns = [
    path("models", api.ModelListApi.as_view()),
    # <path:> because fine-tuned names hold ':' (and 0.28 sends it as %3A).
    path("models/<path:model>", api.ModelDetailApi.as_view()),
]
