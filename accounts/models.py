from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q


class Organization(models.Model):
    """The owner of every object in Tunery. The slug goes into fine-tuned model names."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=40, unique=True)
    public_id = models.CharField(max_length=40, unique=True, editable=False)
    wandb_enabled = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self.public_id:
            self.public_id = f"org-{secrets.token_hex(12)}"
        super().save(*args, **kwargs)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner"
        MEMBER = "member"

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["organization__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "user"], name="one_membership_per_org"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"

    @property
    def is_owner(self) -> bool:
        return self.role == self.Role.OWNER


KEY_PREFIX = "sk-tunery-"


def hash_secret(secret: str) -> str:
    # The secret is 32 random bytes, so a fast hash is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKey(models.Model):
    """A bearer key for /v1. Only its hash is stored; the secret is shown once at creation."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="api_keys")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=24, editable=False)  # visible part, e.g. sk-tunery-ab12
    hashed_secret = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["organization"], condition=Q(revoked_at=None), name="live_keys")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


class WebhookEndpoint(models.Model):
    """OpenAI's `webhook_endpoint`, per organization (accounts/webhooks.py).

    The signing secret must be readable to sign deliveries, so unlike API keys it is stored as
    is; it is shown whole only when created or rotated.
    """

    public_id = models.CharField(max_length=40, unique=True, editable=False)
    organization = models.ForeignKey(Organization, models.CASCADE, related_name="webhooks")
    name = models.CharField(max_length=200)
    url = models.URLField(max_length=2000)
    event_types = models.JSONField(default=list)
    secret = models.CharField(max_length=100, editable=False)
    # Kept valid until previous_secret_expires_at after a rotation that asked for it.
    previous_secret = models.CharField(max_length=100, blank=True, editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.url})"

    @property
    def secret_hint(self) -> str:
        return f"whsec_…{self.secret[-4:]}"


class WebhookDelivery(models.Model):
    """One event sent (or being sent) to one endpoint: the delivery log."""

    class Status(models.TextChoices):
        PENDING = "pending"  # queued or waiting for a retry
        DELIVERED = "delivered"
        FAILED = "failed"  # gave up after the last attempt, or refused (SSRF)

    endpoint = models.ForeignKey(WebhookEndpoint, models.CASCADE, related_name="deliveries")
    event_id = models.CharField(max_length=40)  # the `webhook-id` header, the same on retries
    event_type = models.CharField(max_length=64)
    payload = models.TextField()  # the exact body signed and sent
    is_test = models.BooleanField(default=False)
    status = models.CharField(max_length=16, choices=Status, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["endpoint", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"


class Invitation(models.Model):
    """A one-time, expiring link to join an organization with a role (accounts/invitations.py).

    Only the token's hash is stored: the link is shown once to the owner who made it (and sent
    to the email address, when one was given)."""

    organization = models.ForeignKey(Organization, models.CASCADE, related_name="invitations")
    email = models.EmailField(blank=True)
    role = models.CharField(max_length=8, choices=Membership.Role, default=Membership.Role.MEMBER)
    hashed_token = models.CharField(max_length=64, unique=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"invitation to {self.organization} ({self.email or 'link'}, {self.role})"
