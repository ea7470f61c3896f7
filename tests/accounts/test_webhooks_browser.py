"""In Chromium: settings → Webhooks. Add an endpoint (its secret shown once), edit it, send a
test to a real receiver and see it in the delivery log, rotate the secret, delete it."""

from __future__ import annotations

from typing import Any

import pytest
from openai import OpenAI

from accounts.models import WebhookDelivery, WebhookEndpoint
from tests.conftest import Persona, login
from tests.openai_sdk.receiver import webhook_receiver

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def warm_up(owner: Persona) -> None:
    # The first request imports every app's views (torch included): not within a page timeout.
    assert owner.api().get("/v1/webhook_event_types").status_code == 200


def test_owner_manages_a_webhook_endpoint(
    page: Any, live_server: Any, owner: Persona, settings: Any
) -> None:
    settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True  # the receiver is on 127.0.0.1
    warm_up(owner)
    login(page, live_server, owner.user.username)
    with webhook_receiver() as receiver:
        page.goto(f"{live_server.url}/settings/")
        page.fill("#webhook-name", "ci")
        page.fill("#webhook-url", receiver.url)
        page.uncheck("input[name=event_types][value='fine_tuning.job.failed']")
        page.click("button:has-text('Add endpoint')")
        secret = page.inner_text("[data-testid=signing-secret]")
        assert secret.startswith("whsec_")
        endpoint = WebhookEndpoint.objects.get()
        assert endpoint.event_types == ["fine_tuning.job.succeeded", "fine_tuning.job.cancelled"]

        page.reload()  # shown once: reloading the endpoint's page shows it no more
        assert page.locator("[data-testid=signing-secret]").count() == 0
        page.fill("#edit-name", "ci hooks")
        page.click("button:has-text('Save')")
        page.wait_for_selector("h1 >> text=ci hooks")

        page.select_option("select[name=event_type]", "fine_tuning.job.cancelled")
        page.click("button:has-text('Send test')")
        page.wait_for_selector("[data-testid=test-result] >> text=HTTP 200")
        log = page.inner_text("[data-testid=delivery-log]")
        assert "fine_tuning.job.cancelled" in log and "delivered" in log
        sent = receiver.deliveries[-1]
        event = OpenAI(api_key="x").webhooks.unwrap(sent.body, sent.headers, secret=secret)
        assert event.type == "fine_tuning.job.cancelled"

        page.click("button:has-text('Rotate secret')")
        rotated = page.inner_text("[data-testid=signing-secret]")
        assert rotated.startswith("whsec_") and rotated != secret

        page.on("dialog", lambda dialog: dialog.accept())
        page.click("button:has-text('Delete')")
        page.wait_for_url(f"{live_server.url}/settings/")
        assert "No webhook endpoints yet." in page.inner_text("[data-testid=webhook-table]")
    assert not WebhookEndpoint.objects.exists() and not WebhookDelivery.objects.exists()


def test_a_refused_url_is_explained_on_the_settings_page(
    page: Any, live_server: Any, owner: Persona
) -> None:
    warm_up(owner)
    login(page, live_server, owner.user.username)
    page.goto(f"{live_server.url}/settings/")
    page.fill("#webhook-name", "internal")
    page.fill("#webhook-url", "http://169.254.169.254/latest")
    page.click("button:has-text('Add endpoint')")

    assert "a link-local or cloud metadata address" in page.inner_text(".messages")
    assert not WebhookEndpoint.objects.exists()
