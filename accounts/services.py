"""Write use cases for organizations, members and API keys."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import KEY_PREFIX, ApiKey, Membership, Organization, hash_secret
from accounts.selectors import api_key_get_for_org


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown once; never stored


def organization_create(*, name: str, owner: User, slug: str | None = None) -> Organization:
    slug = slugify(slug or name)[:40]
    if not slug:
        raise ValidationError({"slug": "An organization needs a name with letters or digits."})
    if Organization.objects.filter(slug=slug).exists():
        raise ValidationError({"slug": f"The slug {slug!r} is taken."})
    with transaction.atomic():
        org = Organization.objects.create(name=name, slug=slug)
        Membership.objects.create(organization=org, user=owner, role=Membership.Role.OWNER)
    return org


def require_owner(*, user: User, organization: Organization) -> None:
    if user.is_superuser:
        return
    if not Membership.objects.filter(
        organization=organization, user=user, role=Membership.Role.OWNER
    ).exists():
        raise PermissionDenied("Only an owner of this organization may do that.")


def api_key_create(*, organization: Organization, name: str, created_by: User | None) -> CreatedKey:
    name = name.strip()
    if not name:
        raise ValidationError({"name": "Give the key a name."})
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        organization=organization,
        created_by=created_by,
        name=name[:100],
        prefix=secret[: len(KEY_PREFIX) + 4],
        hashed_secret=hash_secret(secret),
    )
    return CreatedKey(key=key, secret=secret)


def api_key_revoke(*, actor: User, organization: Organization, key_id: int) -> tuple[ApiKey, bool]:
    """Revoke any key of `organization`, whoever made it; only its owners may.

    PermissionDenied for a member; Http404 for another org's key (never leak existence).
    Returns the key and False if it had already been revoked.
    """
    require_owner(user=actor, organization=organization)
    key = api_key_get_for_org(organization=organization, key_id=key_id)
    revoked = ApiKey.objects.filter(pk=key.pk, revoked_at=None).update(revoked_at=timezone.now())
    return key, bool(revoked)


# Writing last_used_at on every request would turn each API call into a write; a minute's
# resolution is plenty for "when was this key last used".
LAST_USED_RESOLUTION = timedelta(minutes=1)


def api_key_touch(*, key: ApiKey) -> None:
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        key.last_used_at = now


def member_add(*, organization: Organization, username: str, role: str) -> Membership:
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Role must be one of {Membership.Role.values}."})
    user = User.objects.filter(username=username).first()
    if user is None:
        raise ValidationError(
            {"username": f"No user named {username!r}. To add someone new, invite them instead."}
        )
    membership, created = Membership.objects.get_or_create(
        organization=organization, user=user, defaults={"role": role}
    )
    if not created:
        raise ValidationError({"username": f"{username} is already a member."})
    return membership


def member_set_role(*, membership: Membership, role: str) -> None:
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Role must be one of {Membership.Role.values}."})
    if membership.is_owner and role != Membership.Role.OWNER:
        _ensure_another_owner(membership)
    membership.role = role
    membership.save(update_fields=["role"])


def member_remove(*, membership: Membership) -> None:
    if membership.is_owner:
        _ensure_another_owner(membership)
    membership.delete()


def _ensure_another_owner(membership: Membership) -> None:
    others = Membership.objects.filter(
        organization_id=membership.organization_id, role=Membership.Role.OWNER
    ).exclude(pk=membership.pk)
    if not others.exists():
        raise ValidationError({"role": "An organization must keep at least one owner."})
