"""Requests refused before any view runs, whatever the view: the classes of input that would
otherwise fail deep down (a 500) or be silently misread.

- A NUL character in the path or the query string: PostgreSQL refuses it in any text
  parameter, so a lookup by id (`/v1/files/%00`, `?after=%00`) would be a DataError.
- A chunked body without Content-Length: Django reads CONTENT_LENGTH bytes, so the body would
  arrive empty ("No file was submitted").
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest

from common.safejson import printable
from config.api import error_response, is_api_path


class RequestGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refused = _nul_in_url(request) or _chunked_without_length(request)
        return refused or self.get_response(request)


def _refuse(request: HttpRequest, message: str, *, param: str | None, code: str) -> HttpResponse:
    if is_api_path(request):
        return error_response(message, status=400, param=param, code=code)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


def _nul_in_url(request: HttpRequest) -> HttpResponse | None:
    if "\x00" in request.path:
        return _refuse(
            request, "The URL path holds a NUL character (%00).", param="path", code="invalid_url"
        )
    for name, values in request.GET.lists():
        if "\x00" in name or any("\x00" in value for value in values):
            return _refuse(
                request,
                f"The query parameter `{printable(name)}` holds a NUL character (%00).",
                param=printable(name),
                code="invalid_url",
            )
    return None


def _chunked_without_length(request: HttpRequest) -> HttpResponse | None:
    encoding = request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if "chunked" not in encoding or request.META.get("CONTENT_LENGTH"):
        return None
    multipart = request.content_type == "multipart/form-data"
    return _refuse(
        request,
        "Chunked request bodies (Transfer-Encoding: chunked) are not supported: send the body "
        "with a Content-Length header.",
        param="file" if multipart else None,
        code="length_required",
    )
