"""Invitations: an owner invites someone by email or by a copyable link; the invitee sets a
password (or, already signed in, just accepts) and joins with the role the owner chose.

A link works once and until it expires (TUNERY_INVITATION_DAYS); only its hash is stored. The
acceptance is one guarded UPDATE, so two people opening one link can't both join."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from accounts.models import Invitation, Membership, Organization, hash_secret


@dataclass(frozen=True)
class CreatedInvitation:
    invitation: Invitation
    token: str  # goes into the link; never stored


def invitation_create(
    *, organization: Organization, created_by: User | None, email: str, role: str
) -> CreatedInvitation:
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Role must be one of {Membership.Role.values}."})
    email = email.strip()
    if email:
        from django.core.validators import validate_email

        validate_email(email)
        already = Membership.objects.filter(
            organization=organization, user__email__iexact=email
        ).exists()
        if already:
            raise ValidationError({"email": f"{email} is already a member."})
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=organization,
        email=email,
        role=role,
        hashed_token=hash_secret(token),
        created_by=created_by,
        expires_at=timezone.now() + timedelta(days=settings.TUNERY_INVITATION_DAYS),
    )
    return CreatedInvitation(invitation=invitation, token=token)


def invitation_send(*, invitation: Invitation, url: str) -> None:
    """Email the link to the invitation's address (nothing to do for a link-only one)."""
    if not invitation.email:
        return
    inviter = invitation.created_by.username if invitation.created_by else "An owner"
    send_mail(
        subject=f"Join {invitation.organization.name} on Tunery",
        message=(
            f"{inviter} invited you to the organization {invitation.organization.name} on "
            f"Tunery, as {invitation.role}.\n\nOpen this link to set your password and join:\n"
            f"{url}\n\nIt works once, until {invitation.expires_at:%Y-%m-%d %H:%M} UTC."
        ),
        from_email=None,
        recipient_list=[invitation.email],
    )


def pending_for_org(*, organization: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        organization=organization,
        accepted_at=None,
        revoked_at=None,
        expires_at__gt=timezone.now(),
    ).select_related("created_by")


def invitation_find(*, token: str) -> Invitation | None:
    """The usable invitation behind a link, or None (unknown, used, revoked or expired)."""
    return (
        Invitation.objects.select_related("organization")
        .filter(
            hashed_token=hash_secret(token),
            accepted_at=None,
            revoked_at=None,
            expires_at__gt=timezone.now(),
        )
        .first()
    )


GONE = "This invitation has expired, was withdrawn or was already used. Ask an owner for a new one."


def invitation_accept(*, token: str, user: User) -> Membership:
    """`user` joins with the invitation's role. ValidationError if the link is no longer
    usable, or if `user` already belongs to the organization (the link stays usable then)."""
    invitation = invitation_find(token=token)
    if invitation is None:
        raise ValidationError(GONE)
    if Membership.objects.filter(organization=invitation.organization, user=user).exists():
        raise ValidationError(f"You are already a member of {invitation.organization.name}.")
    with transaction.atomic():
        claimed = Invitation.objects.filter(
            pk=invitation.pk, accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
        ).update(accepted_at=timezone.now(), accepted_by=user)
        if not claimed:  # someone else used it a moment ago
            raise ValidationError(GONE)
        return Membership.objects.create(
            organization=invitation.organization, user=user, role=invitation.role
        )


def invitation_accept_new_user(
    *, token: str, username: str, password: str, email: str = ""
) -> tuple[User, Membership]:
    """Create the invitee's account with the password they chose, then accept."""
    username = username.strip()
    if not username:
        raise ValidationError({"username": "Choose a username."})
    if User.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": f"The username {username!r} is taken."})
    candidate = User(username=username, email=email)
    try:
        validate_password(password, user=candidate)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from None
    with transaction.atomic():
        user = User.objects.create_user(username=username, email=email, password=password)
        membership = invitation_accept(token=token, user=user)
    return user, membership


def invitation_revoke(*, organization: Organization, invitation_id: int) -> Invitation:
    """404 for another org's invitation (never leak existence)."""
    invitation = get_object_or_404(Invitation, pk=invitation_id, organization=organization)
    Invitation.objects.filter(pk=invitation.pk, revoked_at=None).update(revoked_at=timezone.now())
    return invitation
