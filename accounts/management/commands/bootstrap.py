"""Idempotent first-run setup: a demo organization, its owner and an API key.

Credentials are printed only when they are created; running it again changes nothing.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from accounts import services
from accounts.models import Organization


class Command(BaseCommand):
    help = "Create the demo organization and owner if missing, printing their credentials once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", default="demo")
        parser.add_argument("--username", default="owner")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        if Organization.objects.filter(slug=options["org"]).exists():
            self.stdout.write(
                f"Tunery is already bootstrapped (organization {options['org']!r}). "
                "Credentials were printed on the first run; "
                f"`python manage.py create_api_key --org {options['org']}` makes a new key, "
                f"`python manage.py changepassword {options['username']}` resets the password."
            )
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.filter(username=options["username"]).first()
        if user is None:
            # Staff so the owner can use the Django admin, where they see only their org.
            user = User.objects.create_user(options["username"], password=password, is_staff=True)
        else:
            user.set_password(password)
            user.is_staff = True
            user.save(update_fields=["password", "is_staff"])
        org = services.organization_create(
            name=options["org"].capitalize(), slug=options["org"], owner=user
        )
        key = services.api_key_create(organization=org, name="bootstrap", created_by=user)
        # The address `make run` serves on (Procfile: TUNERY_PORT, default 8000).
        site = f"http://127.0.0.1:{os.environ.get('TUNERY_PORT') or 8000}"
        self.stdout.write(
            "\n".join(
                [
                    "",
                    "=" * 72,
                    "Tunery is set up. These credentials are shown only once:",
                    f"  login:    {site}/login/  user {user.username!r}  password {password!r}",
                    f"  API key:  {key.secret}",
                    f"  try:      curl -H 'Authorization: Bearer <API key>' {site}/v1/models",
                    "=" * 72,
                    "",
                ]
            )
        )
