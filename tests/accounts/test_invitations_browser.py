"""In Chromium: an owner invites a teammate by link, the teammate sets a password and joins with
the chosen role, the link works once; removing them ends their API key at once. And the owner's
admin never lists the instance's other users (issue #11, Access 3)."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import mail
from django.test import Client

from accounts import services
from accounts.models import Membership
from tests.conftest import PASSWORD, Persona, login
from tests.ui.support import assert_accessible

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_invite_join_once_and_removal_kills_the_key(
    browser: Any, live_server: Any, owner: Persona, outsider: Persona
) -> None:
    owner_page = browser.new_context().new_page()
    login(owner_page, live_server, owner.user.username)
    owner_page.goto(f"{live_server.url}/settings/")
    owner_page.fill("#invite-email", "nina@example.com")
    owner_page.select_option("#invite-role", "owner")
    owner_page.click("[data-testid=invite-form] button[type=submit]")
    link = owner_page.inner_text("[data-testid=invite-url]")
    assert "/invite/" in link
    assert "nina@example.com" in owner_page.inner_text("[data-testid=invitations]")
    assert_accessible(owner_page, "settings with an invitation")
    (sent,) = mail.outbox
    assert sent.to == ["nina@example.com"] and link in sent.body

    # The invitee, in a browser of their own: sets a password and lands in the organization.
    guest = browser.new_context().new_page()
    guest.goto(link)
    assert_accessible(guest, "invitation page")
    guest.fill("#invite-username", "nina")
    guest.fill("#invite-password", "a long new passphrase")
    guest.fill("#invite-password2", "a long new passphrase")
    guest.click("[data-testid=accept]")
    guest.wait_for_url(f"{live_server.url}/")
    assert guest.locator("h1").inner_text() == "Acme"
    membership = Membership.objects.get(user__username="nina", organization=owner.org)
    assert membership.role == "owner"

    # One time only: the same link, in yet another browser, is gone.
    again = browser.new_context().new_page()
    response = again.goto(link)
    assert response is not None and response.status == 410
    assert "no longer works" in again.inner_text("h1")

    # Removed from the settings page: their key stops working on the next request.
    key = services.api_key_create(organization=owner.org, name="nina", created_by=membership.user)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key.secret}")
    assert api.get("/v1/files").status_code == 200
    owner_page.goto(f"{live_server.url}/settings/")
    row = owner_page.locator("tr", has_text="nina").filter(has=owner_page.locator("select"))
    row.locator("button:has-text('Remove')").click()
    owner_page.wait_for_url(f"{live_server.url}/settings/")
    assert not Membership.objects.filter(user__username="nina", organization=owner.org).exists()
    assert api.get("/v1/files").status_code == 401


def test_owner_admin_adds_members_by_exact_username_only(
    browser: Any, live_server: Any, owner: Persona, outsider: Persona
) -> None:
    owner.user.is_staff = True
    owner.user.save(update_fields=["is_staff"])
    page = browser.new_context().new_page()
    page.goto(f"{live_server.url}/admin/login/")
    page.fill("#id_username", owner.user.username)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.goto(f"{live_server.url}/admin/accounts/membership/add/")

    # No list of the instance's users: the other org's owner is not on the page.
    assert page.locator("select#id_user").count() == 0
    assert outsider.user.username not in page.content()
    page.fill("#id_username", outsider.user.username)
    page.select_option("#id_organization", str(owner.org.pk))
    page.select_option("#id_role", "member")
    page.click("input[name=_save]")
    assert Membership.objects.filter(user=outsider.user, organization=owner.org).exists()

    page.goto(f"{live_server.url}/admin/accounts/membership/add/")
    page.fill("#id_username", "nobody-by-that-name")
    page.select_option("#id_organization", str(owner.org.pk))
    page.select_option("#id_role", "member")
    page.click("input[name=_save]")
    assert "Invite them from the Settings page instead" in page.inner_text(".errorlist")
