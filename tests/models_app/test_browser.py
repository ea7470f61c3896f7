"""In Chromium: an owner deletes a model from its page, after a confirmation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models_app.models import FineTunedModel
from tests.conftest import Persona, login
from tests.playground.support import MakeFineTune, ft_name

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_owner_deletes_a_model_from_its_page(
    page: Any, live_server: Any, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    login(page, live_server, owner.user.username)

    page.goto(f"{live_server.url}/models/")
    page.click(f"text={model.name}")
    assert page.locator("[data-testid=model-name]").inner_text() == model.name
    # Samples only on demand: none on load, then the button asks the inference service.
    assert page.locator("[data-testid=sample-completion]").count() == 0
    page.click("[data-testid=samples-button]")
    page.locator("[data-testid=sample-completion]").first.wait_for()
    page.click("[data-testid=delete-model]")
    page.click("[data-testid=confirm-delete]")

    page.wait_for_url(f"{live_server.url}/models/")
    assert f"Deleted {model.name}." in page.content()
    assert model.name not in page.locator("[data-testid=fine-tunes]").inner_text()
    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is not None
    assert not Path(model.artifact_dir).exists()
