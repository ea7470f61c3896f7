"""Shared fixtures: personas (owner, member, outsider), API clients and a real browser."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from accounts import services
from accounts.models import Membership, Organization
from tests.factories import MembershipFactory, OrganizationFactory, UserFactory

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Playwright's sync API runs an event loop in the test thread; Django's ORM calls from the test
# body are still synchronous and safe.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # PBKDF2 costs 1-2 s per persona on these 2-core machines; tests don't need its strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class Persona:
    user: User
    org: Organization
    key: str  # an API key secret acting for this user in `org`

    def api(self) -> ApiClient:
        return ApiClient(self.key)


class ApiClient(Client):
    """Django's test client with a Bearer key on every request."""

    def __init__(self, key: str, **kwargs: Any) -> None:
        super().__init__(HTTP_AUTHORIZATION=f"Bearer {key}", **kwargs)


def _persona(username: str, org: Organization, role: str) -> Persona:
    user = UserFactory.create(username=username)
    MembershipFactory.create(user=user, organization=org, role=role)
    key = services.api_key_create(organization=org, name=f"{username}-key", created_by=user)
    return Persona(user=user, org=org, key=key.secret)


@pytest.fixture
def acme(db: None) -> Organization:
    return OrganizationFactory.create(name="Acme", slug="acme")


@pytest.fixture
def owner(acme: Organization) -> Persona:
    """Owns the acme organization and everything under test."""
    return _persona("olivia", acme, Membership.Role.OWNER)


@pytest.fixture
def member(acme: Organization) -> Persona:
    """A plain member of acme: may use things, may not manage keys or delete models."""
    return _persona("mike", acme, Membership.Role.MEMBER)


@pytest.fixture
def outsider(db: None) -> Persona:
    """Owner of another organization; must never see acme's objects."""
    other = OrganizationFactory.create(name="Globex", slug="globex")
    return _persona("oscar", other, Membership.Role.OWNER)


# --- the browser ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def login(page: Any, live_server: Any, username: str, password: str = PASSWORD) -> None:
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


# --- tiny models and shared data -------------------------------------------------------------

SHARED_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: Any) -> str:
    """A random-init tiny Llama with a real tokenizer and chat template, built once per run."""
    from engine.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model"))


@pytest.fixture
def tiny_base(db: None, tiny_model_path: str) -> Any:
    """Registers the tiny model as a base model named `tiny-llama` (trains in seconds)."""
    from models_app.models import BaseModel

    base, _ = BaseModel.objects.update_or_create(
        name="tiny-llama",
        defaults={"source": tiny_model_path, "context_length": 512, "base_lr_lora": 2e-2},
    )
    return base


def sms_subset(tmp_path: Any, n: int, *, name: str = "sms.jsonl", split: str = "train") -> Any:
    """The first n rows of the real SMS spam data (UCI, CC BY 4.0), as a JSONL file."""
    lines = (SHARED_DATA / "sms_spam" / f"{split}.jsonl").read_text().splitlines()[:n]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path
