"""Typed requests: what the middleware and authentication guarantee to views."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails
from rest_framework.request import Request

from accounts.models import ApiKey, Membership, Organization


class LoggedInRequest(HttpRequest):
    """Behind @login_required: a real user, maybe in no organization yet."""

    user: User


class AuthedHtmxRequest(LoggedInRequest):
    htmx: HtmxDetails
    organization: Organization
    membership: Membership


class AuthedApiRequest(Request):
    auth: ApiKey


def api_org(request: AuthedApiRequest) -> Organization:
    """The organization a /v1 request acts for: its API key's."""
    return request.auth.organization
