"""Picks the organization a browser session acts for (users may belong to several)."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from accounts import selectors

SESSION_KEY = "organization_id"


class CurrentOrganizationMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        # Set on every request here; views read them through AuthedHtmxRequest (accounts/http.py).
        request.organization = None  # type: ignore[attr-defined]  # added by this middleware
        request.membership = None  # type: ignore[attr-defined]  # as above
        # /v1 is authenticated by API key, never by session.
        if not request.path.startswith("/v1") and request.user.is_authenticated:
            memberships = list(selectors.membership_list_for_user(user=request.user))
            chosen = next(
                (m for m in memberships if m.organization_id == request.session.get(SESSION_KEY)),
                memberships[0] if memberships else None,
            )
            if chosen is not None:
                request.organization = chosen.organization  # type: ignore[attr-defined]  # as above
                request.membership = chosen  # type: ignore[attr-defined]  # as above
                request.memberships = memberships  # type: ignore[attr-defined]  # as above
        return self.get_response(request)
