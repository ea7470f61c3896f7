"""Queue webhook deliveries for an event (a leaf module: the jobs runner calls it).

An event is OpenAI's payload `{"id": "evt_…", "object": "event", "created_at", "type", "data"}`;
each subscribed endpoint of the organization gets one WebhookDelivery row holding the exact
body, and a `default`-queue task sends it after commit (accounts/delivery.py).
"""

from __future__ import annotations

import json
import time
from functools import partial
from typing import Any

from django.db import transaction

from accounts import tasks
from accounts.models import WebhookDelivery, WebhookEndpoint
from common.ids import random_id

# What Tunery sends: the fine-tuning events of OpenAI's list (the SDK's `event_types`).
EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")


def event_payload(event_type: str, data: dict[str, Any]) -> tuple[str, str]:
    """(event id, JSON body) of a new event."""
    event_id = random_id("evt_", 24)
    body = {
        "id": event_id,
        "object": "event",
        "created_at": int(time.time()),
        "type": event_type,
        "data": data,
    }
    return event_id, json.dumps(body, separators=(",", ":"))


def event_send(*, organization_id: int, event_type: str, data: dict[str, Any]) -> int:
    """Queue `event_type` for every endpoint of the org that subscribed to it; how many."""
    endpoints = [
        e
        for e in WebhookEndpoint.objects.filter(organization_id=organization_id)
        if event_type in (e.event_types or [])
    ]
    if not endpoints:
        return 0
    event_id, body = event_payload(event_type, data)
    for endpoint in endpoints:
        delivery = WebhookDelivery.objects.create(
            endpoint=endpoint, event_id=event_id, event_type=event_type, payload=body
        )
        transaction.on_commit(partial(_enqueue, delivery.pk))
    return len(endpoints)


def _enqueue(delivery_id: int) -> None:
    tasks.deliver_webhook.delay(delivery_id)
