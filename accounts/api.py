"""/v1/webhook_endpoints and /v1/webhook_event_types (OpenAI's `client.webhooks`)."""

from __future__ import annotations

from typing import Any

from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import webhooks
from accounts.http import AuthedApiRequest, api_org
from accounts.webhook_events import EVENT_TYPES
from common.errors import ServiceError
from common.pagination import cursor_page, parse_limit


def _body(request: AuthedApiRequest) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        raise ServiceError("The request body must be a JSON object.")
    return dict(data.items())


def _endpoint(request: AuthedApiRequest, endpoint_id: str) -> Any:
    return webhooks.endpoint_get_for_org(organization=api_org(request), endpoint_id=endpoint_id)


class WebhookEndpointListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        page, has_more = cursor_page(
            webhooks.endpoint_list_for_org(organization=api_org(request)),
            after=request.query_params.get("after"),
            limit=parse_limit(request.query_params.get("limit"), default=20),
        )
        data = [webhooks.endpoint_json(e) for e in page]
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": has_more,
            }
        )

    def post(self, request: AuthedApiRequest) -> Response:
        body = _body(request)
        endpoint = webhooks.endpoint_create(
            organization=api_org(request),
            name=body.get("name"),
            url=body.get("url"),
            event_types=body.get("event_types"),
        )
        return Response(webhooks.endpoint_json(endpoint, with_secret=True))


class WebhookEndpointDetailApi(APIView):
    def get(self, request: AuthedApiRequest, endpoint_id: str) -> Response:
        return Response(webhooks.endpoint_json(_endpoint(request, endpoint_id)))

    def post(self, request: AuthedApiRequest, endpoint_id: str) -> Response:
        body = _body(request)
        endpoint = webhooks.endpoint_update(
            endpoint=_endpoint(request, endpoint_id),
            name=body.get("name"),
            url=body.get("url"),
            event_types=body.get("event_types"),
        )
        return Response(webhooks.endpoint_json(endpoint))

    def delete(self, request: AuthedApiRequest, endpoint_id: str) -> Response:
        return Response(webhooks.endpoint_delete(endpoint=_endpoint(request, endpoint_id)))


class WebhookEndpointRotateApi(APIView):
    def post(self, request: AuthedApiRequest, endpoint_id: str) -> Response:
        endpoint = webhooks.endpoint_rotate_secret(
            endpoint=_endpoint(request, endpoint_id),
            keep_old=_body(request).get("keep_old_secret_active_for_24_hours", False),
        )
        return Response(webhooks.endpoint_json(endpoint, with_secret=True))


class WebhookEndpointTestApi(APIView):
    def post(self, request: AuthedApiRequest, endpoint_id: str) -> Response:
        return Response(
            webhooks.endpoint_test(
                endpoint=_endpoint(request, endpoint_id),
                event_type=_body(request).get("event_type"),
            )
        )


class WebhookEventTypeListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        return Response({"object": "list", "data": list(EVENT_TYPES)})
