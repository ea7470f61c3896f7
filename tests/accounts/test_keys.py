"""A key lives exactly as long as its creator's membership and account (issue #11, Access 1)."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.test import Client

from accounts import services
from accounts.models import ApiKey, Membership
from tests.conftest import Persona


def logged_in(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def test_removing_a_member_on_the_settings_page_kills_their_key_at_once(
    owner: Persona, member: Persona
) -> None:
    assert member.api().get("/v1/files").status_code == 200
    membership = Membership.objects.get(user=member.user, organization=member.org)

    response = logged_in(owner).post(
        f"/settings/members/{membership.pk}/", {"action": "remove", "role": "member"}
    )

    assert response.status_code == 302
    refused = member.api().get("/v1/files")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


def test_removing_a_member_through_the_service_kills_their_key(
    owner: Persona, member: Persona
) -> None:
    services.member_remove(
        membership=Membership.objects.get(user=member.user, organization=member.org)
    )

    assert member.api().get("/v1/files").status_code == 401
    assert owner.api().get("/v1/files").status_code == 200


def test_deactivating_a_user_kills_their_key(member: Persona) -> None:
    member.user.is_active = False
    member.user.save(update_fields=["is_active"])

    assert member.api().get("/v1/files").status_code == 401


def test_deleting_a_user_kills_their_key(member: Persona) -> None:
    key = ApiKey.objects.get(created_by=member.user)
    member.user.delete()

    assert ApiKey.objects.get(pk=key.pk).created_by is None
    assert member.api().get("/v1/files").status_code == 401


def test_a_key_of_a_member_of_another_org_does_not_survive_leaving_this_one(
    owner: Persona, outsider: Persona
) -> None:
    # The creator still has *a* membership (in globex), just not in the key's org.
    created = services.api_key_create(organization=owner.org, name="x", created_by=outsider.user)
    assert Client(HTTP_AUTHORIZATION=f"Bearer {created.secret}").get("/v1/files").status_code == 401


def test_settings_page_shows_who_made_each_key_and_whether_it_works(
    owner: Persona, member: Persona
) -> None:
    member.api().get("/v1/files")  # sets last_used_at
    Membership.objects.filter(user=member.user).delete()

    html = logged_in(owner).get("/settings/").content.decode()

    key = ApiKey.objects.get(created_by=member.user)
    row = html.split(f'data-testid="key-{key.pk}"')[1].split("</tr>")[0]
    assert "mike" in row
    assert "creator left" in row
    assert "never" not in row  # last used is shown
    assert "Revoke" in row  # the owner can still revoke it


def test_owner_revokes_a_members_key_and_the_member_cannot_revoke_any(
    owner: Persona, member: Persona
) -> None:
    owner_key = ApiKey.objects.get(created_by=owner.user)
    member_key = ApiKey.objects.get(created_by=member.user)

    assert logged_in(member).post(f"/settings/keys/{owner_key.pk}/revoke/").status_code == 403
    assert owner.api().get("/v1/files").status_code == 200

    logged_in(owner).post(f"/settings/keys/{member_key.pk}/revoke/")
    assert member.api().get("/v1/files").status_code == 401


def test_api_key_revoke_is_owner_only_and_org_scoped(
    owner: Persona, member: Persona, outsider: Persona
) -> None:
    key = ApiKey.objects.get(created_by=member.user)

    with pytest.raises(PermissionDenied):
        services.api_key_revoke(actor=member.user, organization=owner.org, key_id=key.pk)
    with pytest.raises(Http404):
        services.api_key_revoke(actor=outsider.user, organization=outsider.org, key_id=key.pk)
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None

    revoked_key, revoked = services.api_key_revoke(
        actor=owner.user, organization=owner.org, key_id=key.pk
    )
    assert (revoked_key.pk, revoked) == (key.pk, True)
    again = services.api_key_revoke(actor=owner.user, organization=owner.org, key_id=key.pk)
    assert again[1] is False
