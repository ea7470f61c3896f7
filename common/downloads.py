"""What a page shows for a download a worker builds (models_app.models.Export): a "Prepare"
button, then "Preparing…" polled by HTMX, then a link to the finished file; on failure the
error and the button again. One template (exports/status.html) for every page that offers one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import content_disposition_header

from common.errors import ServiceError

TEMPLATE = "exports/status.html"


@dataclass(frozen=True)
class ExportBox:
    """One download's fragment: its element id (unique on the page), its state
    (models_app.services.export_state), its three URLs and its words."""

    dom_id: str
    testid: str
    state: dict[str, Any]
    start_url: str
    status_url: str
    download_url: str
    prepare: str  # the button: "Prepare CSV"
    preparing: str  # while a worker builds it: "Preparing the CSV…"
    ready: str  # the link: "Download CSV"
    format: str = ""  # said beside the size: "zip"
    error: str | None = None  # the start was refused (e.g. the model's files are missing)

    @property
    def busy(self) -> bool:
        return self.state["status"] in ("pending", "running")


def render_box(request: HttpRequest, box: ExportBox) -> HttpResponse:
    return render(request, TEMPLATE, {"box": box})


def prepare(
    request: HttpRequest,
    start: Callable[[], object],
    box: Callable[[str | None], ExportBox],
    back: Any,
) -> HttpResponse:
    """A "Prepare" button's POST: queue the build (`start`), then answer the fragment (`box`,
    given the refusal's words if it was refused) to HTMX, or go `back` to the page."""
    error = None
    try:
        start()
    except ServiceError as exc:
        error = exc.message
        messages.error(request, error)
    if getattr(request, "htmx", False):
        return render_box(request, box(error))
    return redirect(back)


def stream(handle: Any, filename: str, content_type: str | None = None) -> FileResponse:
    """A built file, streamed (from this host's disk or the store): the only part of a
    download the web process does."""
    response = FileResponse(handle, content_type=content_type)
    response["Content-Disposition"] = content_disposition_header(True, filename)
    return response
