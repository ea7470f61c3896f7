"""Root URLs. /v1 is OpenAI's API (slash-less paths, JSON errors); the rest is the browser UI."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz),
    path("v1/", include("config.api_urls")),
    path("datasets/", include("datasets.urls")),
    path("jobs/", include("jobs.urls")),
    path("models/", include("models_app.urls")),
    path("playground/", include("playground.urls")),
    path("", include("accounts.urls")),
]

handler403 = "accounts.views.permission_denied"
handler404 = "config.api.handler404"
handler500 = "config.api.handler500"
