"""Worker side of webhooks: sign a delivery and POST it to an address checked for SSRF.

Signatures are Standard Webhooks', as OpenAI sends them and `client.webhooks.unwrap()` checks
them: `webhook-id` (the event id, the same on every retry), `webhook-timestamp` (this attempt's
Unix time) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
base64-decoded part of the `whsec_` secret (and a second `v1,` value for a previous secret still
valid after a rotation).

SSRF: the URL's host is resolved once per attempt, every address it resolves to is checked, and
the connection goes to the checked address (TLS still verifies the host name), so a DNS answer
that changes between the check and the connection (rebinding) cannot redirect it. Redirects are
not followed. Loopback, private and this server's own addresses are refused unless
TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS is on; link-local and cloud-metadata addresses always are.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from urllib.parse import urlsplit

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from accounts.models import WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud metadata services, refused whatever the setting (most are link-local anyway).
METADATA = {
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
}
RESPONSE_LIMIT = 64 * 1024
USER_AGENT = "Tunery-Webhooks/1.0"


class Refused(Exception):
    """The URL may not be delivered to (bad scheme, unresolvable, or a refused address)."""


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str
    ip: str


def sign(secret: str, event_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{event_id}.{timestamp}.{body}".encode()
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(endpoint: WebhookEndpoint, event_id: str, timestamp: int, body: str) -> str:
    signatures = [sign(endpoint.secret, event_id, timestamp, body)]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > timezone.now():
        signatures.append(sign(endpoint.previous_secret, event_id, timestamp, body))
    return " ".join(signatures)


@lru_cache(maxsize=1)
def _own_addresses() -> frozenset[IPAddress]:
    """This machine's addresses as its own name resolves, and the hosts it serves."""
    names = {socket.gethostname(), socket.getfqdn()}
    names.update(h for h in settings.ALLOWED_HOSTS if h and "*" not in h and not h.startswith("."))
    found: set[IPAddress] = set()
    for name in names:
        try:
            for info in socket.getaddrinfo(name, None):
                found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except (OSError, ValueError):
            continue
    return frozenset(found)


def address_refusal(ip: IPAddress, *, allow_private: bool) -> str | None:
    """Why this address is refused, or None if it may be delivered to."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA or ip.is_link_local:
        return "a link-local or cloud metadata address"
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "not a unicast address"
    if allow_private:
        return None
    if ip.is_loopback:
        return "a loopback address"
    if ip in _own_addresses():
        return "this server's own address"
    if ip.is_private or not ip.is_global:
        return "a private address"
    return None


def resolve_target(url: str, *, allow_private: bool | None = None) -> Target:
    """Check `url` and pick the address to connect to; Refused(reason) otherwise."""
    if allow_private is None:
        allow_private = settings.TUNERY_WEBHOOK_ALLOW_PRIVATE_TARGETS
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused("the URL must be http(s)://host/…")
    if parts.username or parts.password:
        raise Refused("the URL must not hold credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise Refused("the URL's port is not a number") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # UnicodeError: a label IDNA can't encode (> 63)
        raise Refused(f"{parts.hostname} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    # Every address must pass: a name with one public and one private answer is refused.
    for ip in addresses:
        reason = address_refusal(ip, allow_private=allow_private)
        if reason is not None:
            raise Refused(f"{parts.hostname} resolves to {ip}, {reason}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(parts.scheme, parts.hostname, port, path, str(addresses[0]))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = target.ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = target.ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        context = ssl.create_default_context()
        self.sock = context.wrap_socket(sock, server_hostname=self.host)


def post(url: str, body: str, headers: dict[str, str]) -> int:
    """POST to the checked address; the response's status code. Refused or OSError."""
    target = resolve_target(url)
    timeout = settings.TUNERY_WEBHOOK_TIMEOUT_SECONDS
    conn: http.client.HTTPConnection = (
        _PinnedHTTPSConnection(target, timeout)
        if target.scheme == "https"
        else _PinnedHTTPConnection(target, timeout)
    )
    try:
        conn.request("POST", target.path, body=body.encode(), headers=headers)
        response = conn.getresponse()
        response.read(RESPONSE_LIMIT)
        return response.status
    finally:
        conn.close()


def send(endpoint: WebhookEndpoint, event_id: str, body: str) -> int:
    """Sign and send one body now; the status code (Refused/OSError/HTTPException on failure)."""
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(endpoint, event_id, timestamp, body),
    }
    return post(endpoint.url, body, headers)


def retry_delay(attempts: int) -> int:
    """Exponential backoff: the base delay, doubled after each failed attempt."""
    return int(settings.TUNERY_WEBHOOK_RETRY_SECONDS) * (1 << max(0, attempts - 1))


def delivery_attempt(*, delivery_id: int) -> int | None:
    """One attempt at a pending delivery. Returns seconds to wait before the next one, or None
    when there is nothing more to do (delivered, given up, refused, or not ours to send)."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    # Claim this attempt: a duplicate task message finds the counter moved and stops.
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=WebhookDelivery.Status.PENDING, attempts=delivery.attempts
    ).update(attempts=F("attempts") + 1, last_attempt_at=timezone.now(), next_attempt_at=None)
    if not claimed:
        return None
    attempts = delivery.attempts + 1
    code: int | None
    try:
        code = send(delivery.endpoint, delivery.event_id, delivery.payload)
    except Refused as exc:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.FAILED, last_error=f"Refused: {exc}"
        )
        return None
    except (OSError, http.client.HTTPException) as exc:
        code, error = None, f"{type(exc).__name__}: {exc}"
    else:
        error = "" if 200 <= code < 300 else f"HTTP {code}"
    if not error:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.DELIVERED, status_code=code, last_error=""
        )
        return None
    if attempts >= settings.TUNERY_WEBHOOK_MAX_ATTEMPTS:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status=WebhookDelivery.Status.FAILED,
            status_code=code,
            last_error=f"{error} (gave up after {attempts} attempts)",
        )
        return None
    delay = retry_delay(attempts)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        status_code=code,
        last_error=error,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )
    return delay
