"""Webhook endpoints (/v1/webhook_endpoints), signed deliveries with retries, and SSRF refusals.

Deliveries go to a real HTTP receiver on 127.0.0.1 (allowed by the admin setting in these tests)
and are verified with the real SDK's `webhooks.unwrap`.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from typing import Any
from unittest import mock

import pytest
from openai import OpenAI
from openai.types.webhooks import (
    FineTuningJobFailedWebhookEvent,
    WebhookEndpoint,
    WebhookEndpointWithSecret,
)

from accounts import delivery, webhook_events, webhooks
from accounts.models import WebhookDelivery
from accounts.models import WebhookEndpoint as Endpoint
from jobs import events
from jobs.models import FineTuneJob
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.factories import BaseModelFactory, FileFactory
from tests.openai_sdk.receiver import webhook_receiver

EVENTS = list(webhook_events.EVENT_TYPES)
SDK = OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")


def create(persona: Persona, **body: Any) -> Any:
    body = {"name": "ci", "url": "https://hooks.example.com/t", "event_types": EVENTS, **body}
    return persona.api().post("/v1/webhook_endpoints", body, content_type="application/json")


@pytest.fixture
def public_dns() -> Any:
    """hooks.example.com resolves to a public address (nothing is ever sent to it)."""
    real = socket.getaddrinfo

    def fake(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.example.com":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]
        return real(host, *args, **kwargs)

    with mock.patch("accounts.delivery.socket.getaddrinfo", fake):
        yield


def test_endpoint_resource_has_the_sdk_shapes(
    owner: Persona, outsider: Persona, public_dns: Any
) -> None:
    client = owner.api()

    created = create(owner).json()
    endpoint_id = created["id"]
    retrieved = client.get(f"/v1/webhook_endpoints/{endpoint_id}").json()
    unchanged = client.post(
        f"/v1/webhook_endpoints/{endpoint_id}", {"name": "ci"}, content_type="application/json"
    ).json()
    updated = client.post(
        f"/v1/webhook_endpoints/{endpoint_id}",
        {"event_types": ["fine_tuning.job.failed"]},
        content_type="application/json",
    ).json()
    listed = client.get("/v1/webhook_endpoints").json()
    types = client.get("/v1/webhook_event_types").json()

    assert WebhookEndpointWithSecret.model_validate(created).signing_secret.startswith("whsec_")
    assert "signing_secret" not in retrieved
    assert WebhookEndpoint.model_validate(retrieved).signing_secret_hint.endswith(
        created["signing_secret"][-4:]
    )
    assert unchanged["updated_at"] == created["updated_at"]
    assert updated["event_types"] == ["fine_tuning.job.failed"]
    assert [e["id"] for e in listed["data"]] == [endpoint_id]
    assert (listed["first_id"], listed["last_id"], listed["has_more"]) == (
        endpoint_id,
        endpoint_id,
        False,
    )
    assert types == {"object": "list", "data": EVENTS}
    assert outsider.api().get(f"/v1/webhook_endpoints/{endpoint_id}").status_code == 404
    assert outsider.api().get("/v1/webhook_endpoints").json()["data"] == []
    assert outsider.api().delete(f"/v1/webhook_endpoints/{endpoint_id}").status_code == 404
    deleted = client.delete(f"/v1/webhook_endpoints/{endpoint_id}").json()
    assert deleted == {"object": "webhook_endpoint.deleted", "id": endpoint_id, "deleted": True}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "https://user:pw@hooks.example.com/x"}, "url"),
        ({"url": 5}, "url"),
        ({"name": ""}, "name"),
        ({"event_types": "fine_tuning.job.failed"}, "event_types"),
        ({"event_types": []}, "event_types"),
        ({"event_types": ["fine_tuning.job.failed", "batch.completed"]}, "event_types.1"),
    ],
)
def test_bad_endpoints_are_400s_naming_the_param(
    owner: Persona, public_dns: Any, body: dict[str, Any], param: str
) -> None:
    assert assert_envelope(create(owner, **body), 400)["param"] == param
    assert not Endpoint.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/x",
        "http://localhost/x",
        "http://[::1]/x",
        "http://10.1.2.3/x",
        "http://192.168.0.10/x",
        "http://172.16.5.4/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00:ec2::254]/x",
        "http://0.0.0.0/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://100.64.0.1/x",
        "http://" + "a" * 64 + ".example.com/x",  # no such name: IDNA can't even encode it
    ],
)
def test_private_loopback_and_metadata_targets_are_refused(owner: Persona, url: str) -> None:
    error = assert_envelope(create(owner, url=url), 400)

    assert error["param"] == "url"
    assert "not allowed" in error["message"]


def test_the_servers_own_address_is_refused(owner: Persona) -> None:
    own = next(iter(delivery._own_addresses()), None)
    if own is None:
        pytest.skip("this machine's name resolves to no address")
    assert delivery.address_refusal(own, allow_private=False) is not None
    assert (
        delivery.address_refusal(ipaddress.ip_address("93.184.216.34"), allow_private=False) is None
    )


def test_the_admin_setting_allows_private_but_never_metadata_addresses(settings: Any) -> None:
    settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True

    assert delivery.resolve_target("http://127.0.0.1:9/x").ip == "127.0.0.1"
    assert delivery.resolve_target("http://10.0.0.1/x").ip == "10.0.0.1"
    for url in ("http://169.254.169.254/x", "http://[fd00:ec2::254]/x", "http://100.100.100.200/"):
        with pytest.raises(delivery.Refused, match="metadata"):
            delivery.resolve_target(url)


def test_a_name_resolved_once_is_the_address_connected_to(settings: Any) -> None:
    # DNS rebinding: the first answer (checked) is where the request goes, whatever later
    # answers say; the Host header keeps the name.
    settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    answers = iter(["127.0.0.1", "10.9.9.9", "10.9.9.9"])
    real = socket.getaddrinfo

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.rebind.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]
        return real(host, port, *args, **kwargs)

    with (
        webhook_receiver() as receiver,
        mock.patch("accounts.delivery.socket.getaddrinfo", rebinding),
    ):
        port = receiver.url.split(":")[2].split("/")[0]
        code = delivery.post(f"http://hooks.rebind.test:{port}/x", "{}", {"webhook-id": "1"})

    assert code == 200
    assert receiver.deliveries[0].headers["host"] == f"hooks.rebind.test:{port}"
    assert next(answers) == "10.9.9.9"  # resolved exactly once


def test_a_job_event_is_queued_for_subscribed_endpoints_only(
    owner: Persona, public_dns: Any, django_capture_on_commit_callbacks: Any
) -> None:
    failed_only = create(owner, event_types=["fine_tuning.job.failed"]).json()["id"]
    create(owner, event_types=["fine_tuning.job.succeeded"])
    job = FineTuneJob.objects.create(
        public_id="ftjob-abc",
        api="current",
        organization=owner.org,
        model="ada",
        base_model=BaseModelFactory.create(),
        training_file=FileFactory.create(organization=owner.org),
        seed=1,
    )

    with (
        mock.patch("accounts.tasks.deliver_webhook.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        events.emit(job, "failed", reason="bad data")

    [queued] = WebhookDelivery.objects.all()
    delay.assert_called_once_with(queued.pk)
    assert queued.endpoint.public_id == failed_only
    event = json.loads(queued.payload)
    assert (event["type"], event["object"], event["data"]) == (
        "fine_tuning.job.failed",
        "event",
        {"id": "ftjob-abc"},
    )


def test_signatures_verify_with_the_sdk_and_cover_a_kept_previous_secret(owner: Persona) -> None:
    with mock.patch("accounts.webhooks.delivery.resolve_target"):
        endpoint = webhooks.endpoint_create(
            organization=owner.org, name="n", url="https://hooks.example.com/", event_types=EVENTS
        )
    old = endpoint.secret
    webhooks.endpoint_rotate_secret(endpoint=endpoint, keep_old=True)
    event_id, body = webhook_events.event_payload("fine_tuning.job.failed", {"id": "ftjob-1"})
    timestamp = int(time.time())
    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": delivery.signature_header(endpoint, event_id, timestamp, body),
    }

    for secret in (endpoint.secret, old):
        event = SDK.webhooks.unwrap(body, headers, secret=secret)
        assert isinstance(event, FineTuningJobFailedWebhookEvent)
    webhooks.endpoint_rotate_secret(endpoint=endpoint, keep_old=False)
    headers["webhook-signature"] = delivery.signature_header(endpoint, event_id, timestamp, body)
    with pytest.raises(Exception, match="signature"):
        SDK.webhooks.unwrap(body, headers, secret=old)


def test_a_refused_address_fails_the_delivery_without_retrying(owner: Persona) -> None:
    with mock.patch("accounts.webhooks.delivery.resolve_target"):  # allowed when created...
        endpoint = webhooks.endpoint_create(
            organization=owner.org, name="n", url="http://127.0.0.1:9/x", event_types=EVENTS
        )
    webhook_events.event_send(
        organization_id=owner.org.pk, event_type="fine_tuning.job.failed", data={"id": "ftjob-1"}
    )
    log = WebhookDelivery.objects.get(endpoint=endpoint)

    assert delivery.delivery_attempt(delivery_id=log.pk) is None  # ...refused when delivered

    log.refresh_from_db()
    assert (log.status, log.attempts) == ("failed", 1)
    assert log.last_error == "Refused: 127.0.0.1 resolves to 127.0.0.1, a loopback address"


def test_failed_attempts_back_off_then_deliver_and_are_logged(
    owner: Persona, settings: Any
) -> None:
    # The task retries with the delay delivery_attempt returns (a real worker does it in
    # tests/openai_sdk/test_sdk_full.py); here each attempt is called directly.
    settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.TUNERY_WEBHOOK_RETRY_SECONDS = 30
    with webhook_receiver() as receiver:
        receiver.statuses = [503, 500]
        endpoint = webhooks.endpoint_create(
            organization=owner.org, name="n", url=receiver.url, event_types=EVENTS
        )
        webhook_events.event_send(
            organization_id=owner.org.pk,
            event_type="fine_tuning.job.succeeded",
            data={"id": "ftjob-x"},
        )
        log = WebhookDelivery.objects.get(endpoint=endpoint)

        delays = [delivery.delivery_attempt(delivery_id=log.pk) for _ in range(3)]
        log.refresh_from_db()

    assert delays == [30, 60, None]
    assert (log.status, log.attempts, log.status_code, log.last_error) == ("delivered", 3, 200, "")
    # Every retry carries the same webhook-id; each verifies with the endpoint's secret.
    assert {d.headers["webhook-id"] for d in receiver.deliveries} == {log.event_id}
    for sent in receiver.deliveries:
        SDK.webhooks.unwrap(sent.body, sent.headers, secret=endpoint.secret)
    assert delivery.delivery_attempt(delivery_id=log.pk) is None  # delivered: nothing to redo


def test_the_last_failed_attempt_gives_up(owner: Persona, settings: Any) -> None:
    settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.TUNERY_WEBHOOK_MAX_ATTEMPTS = 2
    with webhook_receiver() as receiver:
        receiver.statuses = [500, 500]
        endpoint = webhooks.endpoint_create(
            organization=owner.org, name="n", url=receiver.url, event_types=EVENTS
        )
        webhook_events.event_send(
            organization_id=owner.org.pk, event_type="fine_tuning.job.failed", data={"id": "j"}
        )
        log = WebhookDelivery.objects.get(endpoint=endpoint)
        delays = [delivery.delivery_attempt(delivery_id=log.pk) for _ in range(2)]

    log.refresh_from_db()
    assert delays[1] is None
    assert (log.status, log.attempts) == ("failed", 2)
    assert log.last_error == "HTTP 500 (gave up after 2 attempts)"
