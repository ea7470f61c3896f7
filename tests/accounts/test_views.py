"""Browser-side accounts: personas, key management, org switching, the scoped admin."""

from __future__ import annotations

import re

from django.test import Client

from accounts.models import ApiKey, Membership
from tests.conftest import Persona
from tests.factories import MembershipFactory, OrganizationFactory


def logged_in(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def test_dashboard_needs_login(db: None) -> None:
    response = Client().get("/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


def test_owner_creates_a_key_and_sees_the_secret_once(owner: Persona) -> None:
    client = logged_in(owner)

    response = client.post("/settings/keys/", {"name": "ci"})

    secret = re.search(r'data-testid="new-secret">([^<]+)<', response.content.decode()).group(1)
    assert ApiKey.objects.filter(organization=owner.org, name="ci").exists()
    assert secret not in client.get("/settings/").content.decode()
    assert Client(HTTP_AUTHORIZATION=f"Bearer {secret}").get("/v1/models").status_code == 200


def test_member_cannot_manage_keys(owner: Persona, member: Persona) -> None:
    client = logged_in(member)
    key = ApiKey.objects.get(created_by=owner.user)

    assert client.post("/settings/keys/", {"name": "x"}).status_code == 403
    assert client.post(f"/settings/keys/{key.pk}/revoke/").status_code == 403
    assert not ApiKey.objects.filter(name="x").exists()
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_outsider_cannot_see_or_revoke_another_orgs_keys(owner: Persona, outsider: Persona) -> None:
    client = logged_in(outsider)
    key = ApiKey.objects.get(created_by=owner.user)

    assert client.post(f"/settings/keys/{key.pk}/revoke/").status_code == 404
    assert key.prefix not in client.get("/settings/").content.decode()


def test_owner_revokes_a_key(owner: Persona) -> None:
    key = ApiKey.objects.get(created_by=owner.user)

    logged_in(owner).post(f"/settings/keys/{key.pk}/revoke/")

    assert owner.api().get("/v1/models").status_code == 401


def test_owner_adds_a_member_and_cannot_remove_the_last_owner(
    owner: Persona, outsider: Persona
) -> None:
    client = logged_in(owner)
    client.post("/settings/members/", {"username": outsider.user.username, "role": "member"})
    assert Membership.objects.filter(organization=owner.org, user=outsider.user).exists()

    me = Membership.objects.get(organization=owner.org, user=owner.user)
    client.post(f"/settings/members/{me.pk}/", {"action": "remove"})

    assert Membership.objects.filter(pk=me.pk).exists()


def test_user_switches_between_organizations(owner: Persona) -> None:
    second = OrganizationFactory.create(name="Second", slug="second")
    MembershipFactory.create(user=owner.user, organization=second, role="member")
    client = logged_in(owner)

    client.post("/org/switch/", {"organization_id": second.pk})

    assert "<h1>Second</h1>" in client.get("/").content.decode()


def test_admin_shows_an_owner_only_their_orgs_keys(owner: Persona, outsider: Persona) -> None:
    owner.user.is_staff = True
    owner.user.save()
    client = logged_in(owner)

    page = client.get("/admin/accounts/apikey/").content.decode()

    assert "olivia-key" in page
    assert "oscar-key" not in page
    other = ApiKey.objects.get(created_by=outsider.user)
    assert client.get(f"/admin/accounts/apikey/{other.pk}/change/").status_code in (302, 404)


def test_admin_shows_a_superuser_everything(owner: Persona, outsider: Persona) -> None:
    owner.user.is_staff = owner.user.is_superuser = True
    owner.user.save()

    page = logged_in(owner).get("/admin/accounts/apikey/").content.decode()

    assert "olivia-key" in page and "oscar-key" in page
