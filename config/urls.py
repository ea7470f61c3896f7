"""Root URLs. /v1 is OpenAI's API (slash-less paths, JSON errors); the rest is the browser UI."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest, HttpResponseRedirect, JsonResponse
from django.templatetags.static import static
from django.urls import include, path
from django.views.decorators.cache import cache_control


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@cache_control(max_age=86400)
def favicon(request: HttpRequest) -> HttpResponseRedirect:
    """Browsers ask for /favicon.ico on pages without an icon link (the admin's) and on their
    own: send them to the icon. A temporary redirect, as the target's hashed name changes with
    each release."""
    return HttpResponseRedirect(static("favicon.svg"))


urlpatterns = [
    path("favicon.ico", favicon),
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
