"""The first browser flow: log in, see the dashboard, create an API key and see it once."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Persona, login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_login_dashboard_and_a_key_shown_exactly_once(
    page: Any, live_server: Any, owner: Persona
) -> None:
    login(page, live_server, owner.user.username)
    assert page.locator("h1").inner_text() == "Acme"
    assert page.locator("nav >> text=Datasets").is_visible()

    page.click("nav >> text=Settings")
    page.fill("#key-name", "from-the-browser")
    page.click("text=Create key")

    secret = page.locator("[data-testid=new-secret]").inner_text()
    assert secret.startswith("sk-tunery-")
    assert "from-the-browser" in page.content()

    page.goto(f"{live_server.url}/settings/")
    assert page.locator("[data-testid=new-secret]").count() == 0
    assert secret not in page.content()
