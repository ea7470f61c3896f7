"""Create an API key for an organization and print only its secret (for scripts)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts import services
from accounts.models import Membership, Organization


class Command(BaseCommand):
    help = "Create an API key for --org and print the secret (shown only this once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="organization slug")
        parser.add_argument("--user", help="username the key acts for (default: an owner)")
        parser.add_argument("--name", default="cli", help="a label for the key")

    def handle(self, *args: Any, **options: Any) -> None:
        org = Organization.objects.filter(slug=options["org"]).first()
        if org is None:
            raise CommandError(f"No organization with slug {options['org']!r}.")
        if options["user"]:
            user = User.objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user named {options['user']!r}.")
            if not Membership.objects.filter(organization=org, user=user).exists():
                raise CommandError(f"{user.username} is not a member of {org.slug}.")
        else:
            owner = org.memberships.filter(role=Membership.Role.OWNER).first()
            if owner is None:
                # A key acts for a member and dies with the membership: it needs one.
                raise CommandError(f"{org.slug} has no owner; pass --user USERNAME.")
            user = owner.user
        created = services.api_key_create(organization=org, name=options["name"], created_by=user)
        self.stdout.write(created.secret)
