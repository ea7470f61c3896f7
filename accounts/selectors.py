"""Reads for accounts, always scoped to an organization."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Exists, OuterRef, QuerySet
from django.shortcuts import get_object_or_404

from accounts.models import ApiKey, Membership, Organization, hash_secret


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.filter(user=user).select_related("organization")


def membership_get(*, user: User, organization: Organization) -> Membership | None:
    return Membership.objects.filter(user=user, organization=organization).first()


def member_list_for_org(*, organization: Organization) -> QuerySet[Membership]:
    return Membership.objects.filter(organization=organization).select_related("user")


def member_get_for_org(*, organization: Organization, membership_id: int) -> Membership:
    """404 for another org's membership (never leak existence)."""
    return get_object_or_404(member_list_for_org(organization=organization), pk=membership_id)


def api_key_list_for_org(*, organization: Organization) -> QuerySet[ApiKey]:
    """The org's keys, each annotated with `creator_is_member` (see api_key_get_by_secret)."""
    creator_is_member = Membership.objects.filter(
        organization_id=OuterRef("organization_id"), user_id=OuterRef("created_by_id")
    )
    return (
        ApiKey.objects.filter(organization=organization)
        .select_related("created_by")
        .annotate(creator_is_member=Exists(creator_is_member))
    )


def api_key_get_for_org(*, organization: Organization, key_id: int) -> ApiKey:
    return get_object_or_404(api_key_list_for_org(organization=organization), pk=key_id)


def api_key_get_by_secret(*, secret: str) -> ApiKey | None:
    """The live key with this secret, or None.

    Live means: not revoked, and its creator is still an active user with a membership in the
    key's organization. This is checked here, on every request, rather than by revoking keys
    when a member leaves: a key must die the moment its owner's membership or account does,
    whichever way that happens (the settings page, the admin, a shell, a deleted user).
    """
    creator_is_member = Membership.objects.filter(
        organization_id=OuterRef("organization_id"), user_id=OuterRef("created_by_id")
    )
    return (
        ApiKey.objects.select_related("organization", "created_by")
        .filter(
            Exists(creator_is_member),
            hashed_secret=hash_secret(secret),
            revoked_at=None,
            created_by__is_active=True,
        )
        .first()
    )


def role_for_key(*, key: ApiKey) -> str:
    """A key acts with its creator's role; a key with no live creator acts as a member."""
    if key.created_by_id is None:
        return Membership.Role.MEMBER
    membership = Membership.objects.filter(
        organization_id=key.organization_id, user_id=key.created_by_id
    ).first()
    return membership.role if membership else Membership.Role.MEMBER
