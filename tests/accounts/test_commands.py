"""Operator commands and deployment checks."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from accounts.models import ApiKey, Organization
from tests.conftest import Persona


def test_bootstrap_is_idempotent(db: None) -> None:
    first, second = StringIO(), StringIO()

    call_command("bootstrap", stdout=first)
    call_command("bootstrap", stdout=second)

    assert "sk-tunery-" in first.getvalue()
    assert "sk-tunery-" not in second.getvalue()
    assert Organization.objects.filter(slug="demo").count() == 1
    assert ApiKey.objects.filter(organization__slug="demo").count() == 1


def test_create_api_key_prints_only_the_secret(owner: Persona) -> None:
    out = StringIO()

    call_command("create_api_key", "--org", "acme", "--user", "olivia", "--name", "ops", stdout=out)

    secret = out.getvalue().strip()
    assert secret.startswith("sk-tunery-") and "\n" not in secret
    assert ApiKey.objects.get(name="ops").created_by == owner.user


def test_create_api_key_rejects_unknown_org(db: None) -> None:
    with pytest.raises(CommandError, match="No organization"):
        call_command("create_api_key", "--org", "nope")


def test_check_deploy_is_clean_under_production_settings(tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"},
        "DJANGO_DEBUG": "false",
        "DJANGO_SECURE": "true",
        "DJANGO_SECRET_KEY": "x7" * 30 + "-production-grade-secret-not-insecure",
        "DJANGO_ALLOWED_HOSTS": "tunery.example.com",
        "DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr


def test_a_bad_setting_fails_loudly(tmp_path: Path) -> None:
    env = {**os.environ, "DJANGO_DEBUG": "maybe", "DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "DJANGO_DEBUG must be 'true' or 'false'" in result.stderr
