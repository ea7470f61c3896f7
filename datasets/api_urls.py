"""/v1/files routes: slash-less, with <path:> ids (0.28 sends ids percent-encoded, e.g. %2F)."""

from __future__ import annotations

from django.urls import path

from datasets import api

urlpatterns = [
    path("files", api.FileListCreateApi.as_view()),
    # Before the detail route: <path:> would otherwise swallow "/content".
    path("files/<path:file_id>/content", api.FileContentApi.as_view()),
    path("files/<path:file_id>", api.FileDetailApi.as_view()),
]
