"""Browser pages for accounts: dashboard, organization switcher, members and API keys."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from accounts import selectors, services
from accounts.http import AuthedHtmxRequest
from accounts.middleware import SESSION_KEY

View = Callable[..., HttpResponse]


def org_required(view: View) -> View:
    """Login plus a membership; every page below acts for request.organization."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if getattr(request, "organization", None) is None:
            return render(request, "accounts/no_org.html", status=403)
        return view(request, *args, **kwargs)

    return wrapper


def owner_required(view: View) -> View:
    @org_required
    @wraps(view)
    def wrapper(request: AuthedHtmxRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        services.require_owner(user=request.user, organization=request.organization)
        return view(request, *args, **kwargs)

    return wrapper


def _error_text(exc: ValidationError) -> str:
    return "; ".join(exc.messages)


@org_required
@require_GET
def dashboard(request: AuthedHtmxRequest) -> HttpResponse:
    from datasets.selectors import file_list_for_org
    from jobs.selectors import job_list_for_org
    from models_app.selectors import model_list_for_org

    org = request.organization
    context = {
        "recent_jobs": job_list_for_org(organization=org)[:5],
        "recent_files": file_list_for_org(organization=org)[:5],
        "models": model_list_for_org(organization=org)[:5],
    }
    return render(request, "accounts/dashboard.html", context)


@login_required
@require_POST
def switch_organization(request: HttpRequest) -> HttpResponse:
    wanted = request.POST.get("organization_id", "")
    for membership in selectors.membership_list_for_user(user=request.user):  # type: ignore[arg-type]
        if str(membership.organization_id) == wanted:
            request.session[SESSION_KEY] = membership.organization_id
            break
    return redirect("accounts:dashboard")


@org_required
@require_GET
def settings_page(request: AuthedHtmxRequest) -> HttpResponse:
    return _render_settings(request)


def _render_settings(
    request: AuthedHtmxRequest, *, new_secret: str | None = None, status: int = 200
) -> HttpResponse:
    org = request.organization
    context = {
        "members": selectors.member_list_for_org(organization=org),
        "keys": selectors.api_key_list_for_org(organization=org),
        "is_owner": request.membership.is_owner or request.user.is_superuser,
        "new_secret": new_secret,
        "roles": ["owner", "member"],
    }
    return render(request, "accounts/settings.html", context, status=status)


@owner_required
@require_POST
def api_key_create(request: AuthedHtmxRequest) -> HttpResponse:
    try:
        created = services.api_key_create(
            organization=request.organization,
            name=request.POST.get("name", ""),
            created_by=request.user,
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return _render_settings(request, status=400)
    # The secret is rendered in this one response and never again.
    return _render_settings(request, new_secret=created.secret)


@owner_required
@require_POST
def api_key_revoke(request: AuthedHtmxRequest, key_id: int) -> HttpResponse:
    key = selectors.api_key_get_for_org(organization=request.organization, key_id=key_id)
    services.api_key_revoke(key=key)
    messages.success(request, f"Revoked {key.name}.")
    return redirect("accounts:settings")


@owner_required
@require_POST
def member_add(request: AuthedHtmxRequest) -> HttpResponse:
    try:
        services.member_add(
            organization=request.organization,
            username=request.POST.get("username", "").strip(),
            role=request.POST.get("role", "member"),
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    return redirect("accounts:settings")


@owner_required
@require_POST
def member_update(request: AuthedHtmxRequest, membership_id: int) -> HttpResponse:
    membership = selectors.member_get_for_org(
        organization=request.organization, membership_id=membership_id
    )
    try:
        if request.POST.get("action") == "remove":
            services.member_remove(membership=membership)
        else:
            services.member_set_role(membership=membership, role=request.POST.get("role", ""))
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
    return redirect("accounts:settings")


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    from config.api import error_response, is_api_path

    message = str(exception) if isinstance(exception, PermissionDenied) and str(exception) else ""
    if is_api_path(request):
        return error_response(
            message or "You do not have permission.",
            status=403,
            type="permission_error",
            code="insufficient_permissions",
        )
    return render(request, "403.html", {"message": message}, status=403)
