"""Shared fixtures: personas (owner, member, outsider), API clients and a real browser."""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import User
from django.db.models.signals import post_migrate
from django.dispatch import receiver
from django.http import StreamingHttpResponse
from django.http.response import HttpResponseBase
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


@pytest.fixture(scope="session", autouse=True)
def collected_static() -> Iterator[None]:
    """`collectstatic`, as make run and the Dockerfile do: the manifest storage serves (and
    `{% static %}` names) only collected, hashed files. Skipped while nothing changed.

    The live server then serves them as production does, through whitenoise (hashed names,
    gzip, far-future caching), not through the staticfiles finders pytest-django's live server
    puts in front of the app (they know no hashed names)."""
    from django.conf import settings
    from django.contrib.staticfiles import finders
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.management import call_command

    manifest = Path(settings.STATIC_ROOT) / "staticfiles.json"
    newest = max(
        (
            os.path.getmtime(storage.path(path))
            for finder in finders.get_finders()
            for path, storage in finder.list([])
        ),
        default=0.0,
    )
    if not manifest.exists() or manifest.stat().st_mtime < newest:
        call_command("collectstatic", interactive=False, verbosity=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(StaticFilesHandler, "_should_handle", lambda self, path: False)
        yield


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # PBKDF2 costs 1-2 s per persona on these 2-core machines; tests don't need its strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def streamed(response: HttpResponseBase) -> bytes:
    """The whole body of a streaming response (downloads, CSV exports, SSE)."""
    assert isinstance(response, StreamingHttpResponse), type(response)
    content = response.streaming_content
    assert isinstance(content, Iterator), "an async body: the test client serves sync views"
    return b"".join(content)


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

# /work/shared/data beside the checkout (/work/main or a worktree under /work/wt/…).
SHARED_DATA = next(
    (
        p / "shared" / "data"
        for p in __import__("pathlib").Path(__file__).resolve().parents
        if (p / "shared" / "data").is_dir()
    ),
    __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data",
)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: Any) -> str:
    """A random-init tiny Llama with a real tokenizer and chat template, built once per run."""
    from engine.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model"))


@pytest.fixture(scope="session")
def inference_service(tmp_path_factory: Any) -> Iterator[str]:
    """Tunery's inference service as a real process, started once per test session; its URL.

    The web tier never runs a model: every test that asks for a completion goes through it.
    """
    from tests.inference import inference_service as start

    log = tmp_path_factory.mktemp("inference") / "serve_inference.log"
    with start(log=log) as url:
        yield url


@pytest.fixture
def inference(settings: Any, inference_service: str) -> str:
    """Point this test's web tier at the session's inference service."""
    settings.TUNERY_INFERENCE_BACKEND = "local"
    settings.TUNERY_INFERENCE_URL = inference_service
    return inference_service


@receiver(post_migrate)
def _restore_migration_rows(sender: Any, **kwargs: Any) -> None:
    """The embedded base and its legacy names (ada, curie…), as migration 0002 registers them,
    after every flush: a transactional test empties every table when it ends (then Django sends
    post_migrate, as it does to restore content types), and the next test on that worker may
    need them. Which test ran before which depends on how pytest-xdist shares the files out."""
    if sender.label == "models_app":
        migration = importlib.import_module("models_app.migrations.0002_default_base_model")
        migration.add_default(django_apps, None)


@pytest.fixture
def tiny_base(db: None, tiny_model_path: str, inference: str) -> Any:
    """Registers the tiny model as a base model named `tiny-llama` (trains in seconds)."""
    from models_app.models import BaseModel

    base, _ = BaseModel.objects.update_or_create(
        name="tiny-llama",
        defaults={"source": tiny_model_path, "context_length": 512, "base_lr_lora": 2e-2},
    )
    return base


def validated_upload(owner: Persona, name: str, content: bytes) -> str:
    """Store a training file for `owner` and validate it here, as the worker would; its id."""
    from datasets import services as file_services
    from datasets.processing import file_validate

    file = file_services.file_create(
        organization=owner.org,
        uploaded_by=owner.user,
        filename=name,
        purpose="fine-tune",
        content=content,
    )
    file_validate(file_id=file.pk)
    return file.public_id


def sms_subset(tmp_path: Any, n: int, *, name: str = "sms.jsonl", split: str = "train") -> Any:
    """The first n rows of the real SMS spam data (UCI, CC BY 4.0), as a JSONL file."""
    lines = (SHARED_DATA / "sms_spam" / f"{split}.jsonl").read_text().splitlines()[:n]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: Any) -> Iterator[Any]:
    """moto's standalone S3 server as its own process, once per test session (tests.s3)."""
    from tests.s3 import s3_server as start

    with start(tmp_path_factory.mktemp("s3") / "moto_server.log") as server:
        yield server
