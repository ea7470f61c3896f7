"""In Chromium: compare a base model against its fine-tune in the playground."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Persona, login
from tests.playground.support import TINY_BASE, MakeFineTune, ft_name

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_compare_the_base_and_a_fine_tune_side_by_side(
    page: Any, live_server: Any, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    login(page, live_server, owner.user.username)

    page.goto(f"{live_server.url}/playground/")
    page.select_option("#model-1", TINY_BASE)
    page.select_option("#model-2", model.name)
    page.fill("#id_prompt", "Hello, how are")
    page.fill("#id_temperature", "0")
    page.fill("#id_max_tokens", "8")
    page.click("#run")

    for index, name in enumerate((TINY_BASE, model.name)):
        column = page.locator(f"[data-testid=output-{index}][data-state=done]")
        column.wait_for()
        assert name in column.locator("h2").inner_text()
        assert column.locator(".pg-text").inner_text().strip()
        token = column.locator(".pg-text .tok").first
        # Shaded by probability, with the alternatives on hover.
        assert token.get_attribute("style")
        assert "background-color" in token.get_attribute("style")
        assert "%" in (token.get_attribute("title") or "")
    texts = [page.locator(f"[data-testid=output-{i}] .pg-text").inner_text() for i in (0, 1)]
    assert texts[0] != texts[1]

    page.click("#view-code")
    page.locator("[data-testid=code-python]").first.wait_for()
    assert "client.completions.create(" in page.locator("#code").inner_text()


def test_chat_mode_streams_a_reply(
    page: Any, live_server: Any, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    make_fine_tune(owner.org, ft_name(owner.org))
    login(page, live_server, owner.user.username)

    page.goto(f"{live_server.url}/playground/?model={TINY_BASE}")
    page.check("input[name=mode][value=chat]")
    assert page.locator("#system-row").is_visible()
    page.fill("#id_prompt", "Hi there")
    page.fill("#id_max_tokens", "5")
    page.click("#run")

    page.locator("[data-testid=output-0][data-state=done]").wait_for()
    assert "finish_reason" in page.locator("[data-testid=output-0] .pg-status").inner_text()
