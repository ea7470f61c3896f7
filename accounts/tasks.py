"""Celery entry points for accounts: webhook deliveries (accounts/delivery.py does the work)."""

from __future__ import annotations

from celery import Task, shared_task

from accounts import delivery


@shared_task(name="accounts.deliver_webhook", bind=True, max_retries=None, acks_late=True)
def deliver_webhook(self: Task[[int], None], delivery_id: int) -> None:
    delay = delivery.delivery_attempt(delivery_id=delivery_id)
    if delay is not None:  # bounded by TUNERY_WEBHOOK_MAX_ATTEMPTS inside delivery_attempt
        raise self.retry(countdown=delay)
