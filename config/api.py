"""The /v1 error contract: every error is OpenAI's envelope, whatever raised it.

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

Services raise Django's ValidationError({"param": "message"}) or `common.errors.ServiceError`
(mapped here, the one place that turns a domain refusal into HTTP); DRF's own
exceptions (auth, 404, 405, parse errors, throttling) are translated here too, and the
project-wide handler404/handler500 answer JSON for any path under /v1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from rest_framework import exceptions
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from common.errors import INVALID_REQUEST, ServiceError
from common.redact import redact

logger = logging.getLogger(__name__)


def error_body(
    message: str, *, type: str = INVALID_REQUEST, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    # Every /v1 error passes here: the last line against exception text that shows a path.
    return {"error": {"message": redact(message), "type": type, "param": param, "code": code}}


def error_response(
    message: str,
    *,
    status: int,
    type: str = INVALID_REQUEST,
    param: str | None = None,
    code: str | None = None,
) -> JsonResponse:
    return JsonResponse(error_body(message, type=type, param=param, code=code), status=status)


def _first_validation_error(detail: Any) -> tuple[str | None, str]:
    """Flatten DRF/Django validation details into (param, message) for the envelope."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            param, message = _first_validation_error(value)
            if key == "non_field_errors":
                return param, message
            return (f"{key}.{param}" if param else str(key)), message
    if isinstance(detail, list) and detail:
        return _first_validation_error(detail[0])
    return None, str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: map every known exception to the OpenAI envelope."""
    if isinstance(exc, DjangoValidationError):
        detail = exc.message_dict if hasattr(exc, "error_dict") else exc.messages
        param, message = _first_validation_error(detail)
        return Response(error_body(message, param=param), status=400)
    if isinstance(exc, ServiceError):
        body = error_body(exc.message, type=exc.type, param=exc.param, code=exc.code)
        return Response(body, status=exc.status_code, headers=exc.headers)
    if isinstance(exc, Http404):
        return Response(error_body(str(exc) or "Not found.", param="id"), status=404)
    if isinstance(exc, exceptions.NotAuthenticated | exceptions.AuthenticationFailed):
        message = str(exc.detail)
        return Response(error_body(message, code="invalid_api_key"), status=401)
    if isinstance(exc, DjangoPermissionDenied | exceptions.PermissionDenied):
        message = str(getattr(exc, "detail", "") or exc) or "You do not have permission."
        body = error_body(message, type="permission_error", code="insufficient_permissions")
        return Response(body, status=403)
    if isinstance(exc, exceptions.ValidationError):
        param, message = _first_validation_error(exc.detail)
        return Response(error_body(message, param=param), status=400)
    if isinstance(exc, exceptions.Throttled):
        wait = int(exc.wait or 1)  # type: ignore[attr-defined]  # stub gap: DRF sets it in __init__
        body = error_body(
            f"Rate limit reached for requests. Try again in {wait}s.",
            type="rate_limit_error",
            code="rate_limit_exceeded",
        )
        return Response(body, status=429, headers={"Retry-After": str(wait)})
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = error_body(
            f"The request body is too large: the maximum is {limit:,} bytes "
            f"({limit / 2**20:.0f} MiB). Upload training data with POST /v1/files.",
            code="request_too_large",
        )
        return Response(body, status=413)
    if isinstance(exc, SuspiciousOperation):  # too many fields, a malformed multipart body
        return Response(error_body(f"The request was refused: {exc}"), status=400)
    if isinstance(exc, exceptions.APIException):
        return Response(error_body(str(exc.detail)), status=exc.status_code)
    return None  # unexpected: Django's handler500 answers (JSON under /v1)


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/v1/") or request.path == "/v1"


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request):
        return error_response(
            f"Invalid URL ({request.method} {request.path})", status=404, code="not_found"
        )
    return render(request, "404.html", status=404)


def handler500(request: HttpRequest) -> HttpResponse:
    if is_api_path(request):
        return error_response(
            "The server had an error while processing your request.",
            status=500,
            type="server_error",
        )
    return render(request, "500.html", status=500)


def api_not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Catch-all for unknown /v1 paths: JSON even with DEBUG on (Django's debug 404 is HTML)."""
    return handler404(request)


class ApiExceptionMiddleware:
    """Exceptions no view handled: under /v1 OpenAI's envelope (a ServiceError with its status,
    anything else a 500, with DEBUG on or off); on browser pages a ServiceError is the error page
    with its status and message, never a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, Http404):
            return None
        if isinstance(exception, ServiceError):
            return service_error_response(request, exception)
        if not is_api_path(request):
            return None
        logger.exception("Unhandled error in %s %s", request.method, request.path)
        return handler500(request)


ERROR_HEADINGS = {
    403: "Not allowed",
    404: "Not found",
    409: "Not now",
    413: "Too large",
    429: "Busy",
    503: "Unavailable",
}


def service_error_response(request: HttpRequest, exc: ServiceError) -> HttpResponse:
    """A domain refusal raised outside DRF: OpenAI's envelope under /v1, else the error page."""
    if is_api_path(request):
        response: HttpResponse = error_response(
            exc.message, status=exc.status_code, type=exc.type, param=exc.param, code=exc.code
        )
    else:
        referer = request.META.get("HTTP_REFERER", "")
        same_site = referer.startswith(request.build_absolute_uri("/"))
        context = {
            "status": exc.status_code,
            "heading": ERROR_HEADINGS.get(exc.status_code, "That did not work"),
            "message": redact(exc.message),
            "back": referer if same_site else None,
        }
        response = render(request, "error.html", context, status=exc.status_code)
    for name, value in exc.headers.items():
        response[name] = value
    return response


class AlwaysJsonNegotiation(BaseContentNegotiation):
    """Pick the first parser/renderer regardless of Accept: OpenAI's API is JSON (or a raw
    file body that views return themselves), and a 406 would break clients that send
    `Accept: application/binary` for downloads."""

    def select_parser(self, request: Request, parsers: Iterable[BaseParser]) -> BaseParser | None:
        media_type = request.content_type.split(";")[0].strip()
        parsers = list(parsers)
        for parser in parsers:
            if parser.media_type == media_type:
                return parser
        return parsers[0] if not media_type else None

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return (first, first.media_type)
