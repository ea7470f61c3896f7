"""Every /v1 route, gathered from the apps' api_urls modules."""

from __future__ import annotations

from django.urls import include, path, re_path

from config.api import api_not_found
from config.openapi import OpenApiSchemaApi

urlpatterns = [
    path("openapi.json", OpenApiSchemaApi.as_view()),
    path("", include("accounts.api_urls")),
    path("", include("datasets.api_urls")),
    path("", include("jobs.api_urls")),
    path("", include("models_app.api_urls")),
    path("", include("playground.api_urls")),
    # Last: any other /v1 path is a JSON 404 (the 0.28 CLI aborts on an HTML one).
    re_path(r"^(?P<rest>.*)$", api_not_found),
]
