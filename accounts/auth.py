"""Bearer-key authentication for /v1. request.user is the key's creator, request.auth the key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts import selectors, services


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            # The 0.28 client with OPENAI_API_TYPE=azure sends `api-key` instead.
            secret = request.META.get("HTTP_API_KEY", "")
            if not secret:
                raise exceptions.NotAuthenticated(
                    "You didn't provide an API key. You need to provide your API key in an "
                    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
                )
        else:
            scheme, _, secret = header.partition(" ")
            if scheme.lower() != "bearer" or not secret.strip():
                raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        secret = secret.strip()
        key = selectors.api_key_get_by_secret(secret=secret)
        if key is None:
            shown = f"{secret[:8]}***{secret[-4:]}" if len(secret) > 12 else "***"
            raise exceptions.AuthenticationFailed(f"Incorrect API key provided: {shown}.")
        services.api_key_touch(key=key)
        return (key.created_by or AnonymousUser(), key)

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) for unauthenticated requests.
        return self.keyword
