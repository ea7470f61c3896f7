"""/v1/completions, /v1/chat/completions and the 0.28 client's /v1/engines/{e}/completions."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponseBase, StreamingHttpResponse
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from common.errors import ServiceError
from playground import services
from playground.inference import SseStream
from playground.ratelimit import ApiKeyRateThrottle


def _caller(request: AuthedApiRequest) -> services.Caller:
    user = request.user if request.user.is_authenticated else None
    return services.Caller(organization=api_org(request), api_key=request.auth, user=user)


def _body(request: AuthedApiRequest) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        raise ServiceError("The request body must be a JSON object.")
    return data


def respond(result: dict[str, Any] | SseStream) -> HttpResponseBase:
    if isinstance(result, dict):
        return Response(result)
    return sse_response(result)


def sse_response(stream: SseStream) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # proxies must not hold chunks back
    return response


class CompletionApi(APIView):
    throttle_classes = [ApiKeyRateThrottle]

    def post(self, request: AuthedApiRequest, engine: str | None = None) -> HttpResponseBase:
        result = services.completion_create(
            caller=_caller(request), body=_body(request), model=engine
        )
        return respond(result)


class ChatCompletionApi(APIView):
    throttle_classes = [ApiKeyRateThrottle]

    def post(self, request: AuthedApiRequest) -> HttpResponseBase:
        result = services.chat_completion_create(caller=_caller(request), body=_body(request))
        return respond(result)
