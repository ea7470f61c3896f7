"""Webhook endpoints: OpenAI's `/v1/webhook_endpoints` resource and the settings page's section.

Reads are scoped to the organization (another org's endpoint is "not found"); every write
validates first and raises ServiceError naming its param, before anything is written.
"""

from __future__ import annotations

import base64
import http.client
import secrets
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from accounts import delivery
from accounts.models import Organization, WebhookDelivery, WebhookEndpoint
from accounts.webhook_events import EVENT_TYPES, event_payload
from common.errors import ServiceError
from common.ids import random_id

NAME_MAX = 200
URL_MAX = 2000
PREVIOUS_SECRET_TTL = timedelta(hours=24)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- reads ----------------------------------------------------------------------------------


def endpoint_list_for_org(*, organization: Organization) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(organization=organization)


def endpoint_find_for_org(
    *, organization: Organization, endpoint_id: str
) -> WebhookEndpoint | None:
    return endpoint_list_for_org(organization=organization).filter(public_id=endpoint_id).first()


def endpoint_get_for_org(*, organization: Organization, endpoint_id: str) -> WebhookEndpoint:
    endpoint = endpoint_find_for_org(organization=organization, endpoint_id=endpoint_id)
    if endpoint is None:
        raise ServiceError(
            f"No such webhook endpoint: {endpoint_id}", status=404, param="webhook_endpoint_id"
        )
    return endpoint


def delivery_list_for_endpoint(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookDelivery]:
    return WebhookDelivery.objects.filter(endpoint=endpoint)


# --- shapes ---------------------------------------------------------------------------------


def endpoint_json(endpoint: WebhookEndpoint, *, with_secret: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "object": "webhook_endpoint",
        "id": endpoint.public_id,
        "created_at": int(endpoint.created_at.timestamp()),
        "updated_at": int(endpoint.updated_at.timestamp()),
        "name": endpoint.name,
        "url": endpoint.url,
        "event_types": list(endpoint.event_types),
        "signing_secret_hint": endpoint.secret_hint,
    }
    if with_secret:
        body["signing_secret"] = endpoint.secret
    return body


# --- validation -----------------------------------------------------------------------------


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ServiceError("name must be a non-empty string.", param="name")
    if len(value) > NAME_MAX:
        raise ServiceError(f"name must be at most {NAME_MAX} characters.", param="name")
    return value.strip()


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ServiceError("url must be an http(s) URL.", param="url")
    if len(value) > URL_MAX:
        raise ServiceError(f"url must be at most {URL_MAX} characters.", param="url")
    try:
        # Checked now for a clear 400; checked again, and pinned, at every delivery.
        delivery.resolve_target(value)
    except delivery.Refused as exc:
        raise ServiceError(
            f"Webhook deliveries to {value} are not allowed: {exc}.", param="url"
        ) from None
    return value


def _event_types(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ServiceError("event_types must be a non-empty list.", param="event_types")
    for i, event_type in enumerate(value):
        if event_type not in EVENT_TYPES:
            raise ServiceError(
                f"Unsupported event type {event_type!r}; Tunery sends {', '.join(EVENT_TYPES)}.",
                param=f"event_types.{i}",
            )
    return list(dict.fromkeys(value))


# --- writes ---------------------------------------------------------------------------------


def endpoint_create(
    *, organization: Organization, name: Any, url: Any, event_types: Any
) -> WebhookEndpoint:
    """A new endpoint with a fresh signing secret (returned whole only now)."""
    fields = {"name": _name(name), "url": _url(url), "event_types": _event_types(event_types)}
    now = timezone.now()
    return WebhookEndpoint.objects.create(
        public_id=random_id("we_", 24),
        organization=organization,
        secret=new_secret(),
        updated_at=now,
        **fields,
    )


def endpoint_update(
    *, endpoint: WebhookEndpoint, name: Any = None, url: Any = None, event_types: Any = None
) -> WebhookEndpoint:
    """Change the given fields; `updated_at` moves only if something changed."""
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = _name(name)
    if url is not None:
        changes["url"] = _url(url)
    if event_types is not None:
        changes["event_types"] = _event_types(event_types)
    changes = {k: v for k, v in changes.items() if getattr(endpoint, k) != v}
    if changes:
        changes["updated_at"] = timezone.now()
        WebhookEndpoint.objects.filter(pk=endpoint.pk).update(**changes)
        endpoint.refresh_from_db()
    return endpoint


def endpoint_rotate_secret(*, endpoint: WebhookEndpoint, keep_old: Any = False) -> WebhookEndpoint:
    """A new secret; with `keep_old`, deliveries are signed with both for 24 hours."""
    if not isinstance(keep_old, bool):
        raise ServiceError(
            "keep_old_secret_active_for_24_hours must be a boolean.",
            param="keep_old_secret_active_for_24_hours",
        )
    now = timezone.now()
    WebhookEndpoint.objects.filter(pk=endpoint.pk).update(
        secret=new_secret(),
        previous_secret=endpoint.secret if keep_old else "",
        previous_secret_expires_at=now + PREVIOUS_SECRET_TTL if keep_old else None,
        updated_at=now,
    )
    endpoint.refresh_from_db()
    return endpoint


def endpoint_delete(*, endpoint: WebhookEndpoint) -> dict[str, Any]:
    endpoint.delete()
    return {"object": "webhook_endpoint.deleted", "id": endpoint.public_id, "deleted": True}


def endpoint_test(*, endpoint: WebhookEndpoint, event_type: Any) -> dict[str, Any]:
    """Send a sample event now and answer with the endpoint's status code (OpenAI's
    `webhook_endpoint.test`). The attempt is logged like any delivery. Only an HTTP call, bounded
    by TUNERY_WEBHOOK_TIMEOUT_SECONDS: the one network call a web request makes, because the
    answer must carry its result."""
    if event_type not in EVENT_TYPES:
        raise ServiceError(
            f"event_type must be one of {', '.join(EVENT_TYPES)}.", param="event_type"
        )
    event_id, body = event_payload(event_type, {"id": random_id("ftjob-", 24)})
    with transaction.atomic():
        log = WebhookDelivery.objects.create(
            endpoint=endpoint,
            event_id=event_id,
            event_type=event_type,
            payload=body,
            is_test=True,
            attempts=1,
            last_attempt_at=timezone.now(),
        )
    try:
        code = delivery.send(endpoint, event_id, body)
    except delivery.Refused as exc:
        _test_failed(log, f"Refused: {exc}")
        raise ServiceError(
            f"Webhook deliveries to {endpoint.url} are not allowed: {exc}.", param="url"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        _test_failed(log, f"{type(exc).__name__}: {exc}")
        raise ServiceError(
            f"Could not reach {endpoint.url}: {type(exc).__name__}: {exc}", param="url"
        ) from None
    ok = 200 <= code < 300
    WebhookDelivery.objects.filter(pk=log.pk).update(
        status=WebhookDelivery.Status.DELIVERED if ok else WebhookDelivery.Status.FAILED,
        status_code=code,
        last_error="" if ok else f"HTTP {code}",
    )
    return {
        "object": "webhook_endpoint.test",
        "webhook_endpoint_id": endpoint.public_id,
        "event_type": event_type,
        "status_code": code,
        "success": True,
    }


def _test_failed(log: WebhookDelivery, error: str) -> None:
    WebhookDelivery.objects.filter(pk=log.pk).update(
        status=WebhookDelivery.Status.FAILED, last_error=error
    )
