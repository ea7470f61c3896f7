from __future__ import annotations

from django.urls import path

from models_app import api

urlpatterns = [
    path("models", api.ModelListApi.as_view()),
    # <path:> because fine-tuned names hold ':' (and 0.28 sends it as %3A).
    path("models/<path:model>", api.ModelDetailApi.as_view()),
    # The longer route first: <path:> would also swallow "…/permissions/{id}".
    path(
        "fine_tuning/checkpoints/<path:checkpoint>/permissions/<str:permission_id>",
        api.CheckpointPermissionDetailApi.as_view(),
    ),
    path(
        "fine_tuning/checkpoints/<path:checkpoint>/permissions",
        api.CheckpointPermissionListApi.as_view(),
    ),
]
