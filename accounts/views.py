"""Browser pages for accounts: dashboard, organization switcher, members and API keys."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import invitations, selectors, services, usage, webhooks
from accounts.http import AuthedHtmxRequest, LoggedInRequest
from accounts.middleware import SESSION_KEY
from accounts.webhook_events import EVENT_TYPES
from common.errors import ServiceError
from config.api import error_response, is_api_path
from datasets.readers import csv_bytes
from datasets.selectors import file_list_for_org
from jobs.selectors import job_list_for_org
from models_app.selectors import model_list_for_org

# Any response: pages render, downloads stream (FileResponse, StreamingHttpResponse).
View = Callable[..., HttpResponseBase]


def org_required(view: View) -> View:
    """Login plus a membership; every page below acts for request.organization."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if getattr(request, "organization", None) is None:
            return render(request, "accounts/no_org.html", status=403)
        return view(request, *args, **kwargs)

    return wrapper


def owner_required(view: View) -> View:
    @org_required
    @wraps(view)
    def wrapper(request: AuthedHtmxRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        services.require_owner(user=request.user, organization=request.organization)
        return view(request, *args, **kwargs)

    return wrapper


def _error_text(exc: ValidationError) -> str:
    return "; ".join(exc.messages)


@org_required
@require_GET
def dashboard(request: AuthedHtmxRequest) -> HttpResponse:
    org = request.organization
    context = {
        "recent_jobs": job_list_for_org(organization=org)[:5],
        # Data, not the jobs' results files (those are on each job's page).
        "recent_files": file_list_for_org(organization=org).filter(purpose="fine-tune")[:5],
        "models": model_list_for_org(organization=org)[:5],
    }
    return render(request, "accounts/dashboard.html", context)


@login_required
@require_POST
def switch_organization(request: LoggedInRequest) -> HttpResponse:
    wanted = request.POST.get("organization_id", "")
    for membership in selectors.membership_list_for_user(user=request.user):
        if str(membership.organization_id) == wanted:
            request.session[SESSION_KEY] = membership.organization_id
            break
    return redirect("accounts:dashboard")


@org_required
@require_GET
def settings_page(request: AuthedHtmxRequest) -> HttpResponse:
    return _render_settings(request)


def _render_settings(
    request: AuthedHtmxRequest,
    *,
    new_secret: str | None = None,
    invite_url: str | None = None,
    status: int = 200,
) -> HttpResponse:
    org = request.organization
    context = {
        "invite_url": invite_url,
        "invitations": invitations.pending_for_org(organization=org),
        "members": selectors.member_list_for_org(organization=org),
        "keys": [
            (key, _key_state(key)) for key in selectors.api_key_list_for_org(organization=org)
        ],
        "is_owner": request.membership.is_owner or request.user.is_superuser,
        "new_secret": new_secret,
        "roles": ["owner", "member"],
        "webhooks": webhooks.endpoint_list_for_org(organization=org),
        "event_types": EVENT_TYPES,
    }
    return render(request, "accounts/settings.html", context, status=status)


def _key_state(key: Any) -> str:
    """What the keys table says of a key: why it no longer works, if it doesn't."""
    if key.is_revoked:
        return "revoked"
    if key.created_by is None or not key.creator_is_member:
        return "creator left"  # see selectors.api_key_get_by_secret
    if not key.created_by.is_active:
        return "creator deactivated"
    return "active"


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


@org_required
@require_POST
def api_key_revoke(request: AuthedHtmxRequest, key_id: int) -> HttpResponse:
    key, _ = services.api_key_revoke(
        actor=request.user, organization=request.organization, key_id=key_id
    )
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


@org_required
@require_GET
def usage_page(request: AuthedHtmxRequest) -> HttpResponse:
    org = request.organization
    served = usage.served_rows(organization=org)
    trained = usage.trained_rows(organization=org)
    context = {
        "days": usage.DAYS,
        "totals": usage.totals(served, trained),
        "figure": usage.daily_figure(served, trained),
        "per_model_served": usage.by(
            served, "model", ("requests", "prompt_tokens", "completion_tokens")
        ),
        "per_model_trained": usage.by(trained, "model", ("jobs", "trained_tokens")),
        "per_key": usage.by(served, "key", ("requests", "prompt_tokens", "completion_tokens")),
        "served": served[:200],
        "limits": usage.limits(organization=org),
        "key_rates": usage.key_rates(organization=org),
    }
    return render(request, "accounts/usage.html", context)


@org_required
@require_GET
def usage_csv(request: AuthedHtmxRequest) -> HttpResponse:
    org = request.organization
    served = usage.served_rows(organization=org)
    trained = usage.trained_rows(organization=org)
    response = HttpResponse(
        csv_bytes(usage.CSV_HEADER, usage.csv_rows(served, trained)),
        content_type="text/csv; charset=utf-8",
    )
    response["Content-Disposition"] = f'attachment; filename="{org.slug}-usage.csv"'
    return response


# --- invitations ----------------------------------------------------------------------------


@owner_required
@require_POST
def invitation_create(request: AuthedHtmxRequest) -> HttpResponse:
    try:
        created = invitations.invitation_create(
            organization=request.organization,
            created_by=request.user,
            email=request.POST.get("email", ""),
            role=request.POST.get("role", "member"),
        )
    except ValidationError as exc:
        messages.error(request, _error_text(exc))
        return _render_settings(request, status=400)
    url = request.build_absolute_uri(reverse("accounts:invite", args=[created.token]))
    invitations.invitation_send(invitation=created.invitation, url=url)
    if created.invitation.email:
        messages.success(request, f"Invitation sent to {created.invitation.email}.")
    # The link is in this one response only: only its hash is stored.
    return _render_settings(request, invite_url=url)


@owner_required
@require_POST
def invitation_revoke(request: AuthedHtmxRequest, invitation_id: int) -> HttpResponse:
    invitations.invitation_revoke(organization=request.organization, invitation_id=invitation_id)
    messages.success(request, "Invitation withdrawn: its link no longer works.")
    return redirect("accounts:settings")


@require_http_methods(["GET", "POST"])
def invitation_accept(request: HttpRequest, token: str) -> HttpResponse:
    """The link's page: set a username and password and join, or join as the signed-in user."""
    invitation = invitations.invitation_find(token=token)
    if invitation is None:
        return render(request, "accounts/invite.html", {"gone": invitations.GONE}, status=410)
    errors: dict[str, list[str]] = {}
    if request.method == "POST":
        try:
            if request.user.is_authenticated:
                invitations.invitation_accept(token=token, user=request.user)
                user = request.user
            else:
                password = request.POST.get("password", "")
                if password != request.POST.get("password2", ""):
                    raise ValidationError({"password2": "The two passwords differ."})
                user, _ = invitations.invitation_accept_new_user(
                    token=token,
                    username=request.POST.get("username", ""),
                    password=password,
                    email=invitation.email,
                )
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        except ValidationError as exc:
            errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        else:
            request.session[SESSION_KEY] = invitation.organization_id
            messages.success(request, f"Welcome to {invitation.organization.name}.")
            return redirect("accounts:dashboard")
    context = {
        "invitation": invitation,
        "errors": errors,
        "username": request.POST.get("username", ""),
        "login_url": f"{reverse('accounts:login')}?next={request.path}",
    }
    return render(request, "accounts/invite.html", context, status=400 if errors else 200)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    message = str(exception) if isinstance(exception, PermissionDenied) and str(exception) else ""
    if is_api_path(request):
        return error_response(
            message or "You do not have permission.",
            status=403,
            type="permission_error",
            code="insufficient_permissions",
        )
    return render(request, "403.html", {"message": message}, status=403)


# --- webhooks (settings → Webhooks; the same services as /v1/webhook_endpoints) --------------


def _webhook_page(
    request: AuthedHtmxRequest,
    endpoint: Any,
    *,
    new_secret: str | None = None,
    test_result: dict[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "endpoint": endpoint,
        "deliveries": webhooks.delivery_list_for_endpoint(endpoint=endpoint)[:100],
        "event_types": EVENT_TYPES,
        "is_owner": request.membership.is_owner or request.user.is_superuser,
        "new_secret": new_secret,
        "test_result": test_result,
    }
    return render(request, "accounts/webhook.html", context, status=status)


def _endpoint_or_404(request: AuthedHtmxRequest, endpoint_id: str) -> Any:
    endpoint = webhooks.endpoint_find_for_org(
        organization=request.organization, endpoint_id=endpoint_id
    )
    if endpoint is None:
        raise Http404("No such webhook endpoint.")
    return endpoint


@owner_required
@require_POST
def webhook_create(request: AuthedHtmxRequest) -> HttpResponse:
    try:
        endpoint = webhooks.endpoint_create(
            organization=request.organization,
            name=request.POST.get("name", ""),
            url=request.POST.get("url", "").strip(),
            event_types=request.POST.getlist("event_types"),
        )
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("accounts:settings")
    return _show_secret_once(request, endpoint)


def _show_secret_once(request: AuthedHtmxRequest, endpoint: Any) -> HttpResponse:
    # Redirect-after-POST (a reload must not create or rotate again), and the secret travels in
    # the session for the next page view only.
    request.session[f"webhook-secret-{endpoint.public_id}"] = endpoint.secret
    return redirect("accounts:webhook", endpoint.public_id)


@org_required
@require_GET
def webhook_detail(request: AuthedHtmxRequest, endpoint_id: str) -> HttpResponse:
    endpoint = _endpoint_or_404(request, endpoint_id)
    secret = request.session.pop(f"webhook-secret-{endpoint.public_id}", None)
    return _webhook_page(request, endpoint, new_secret=secret)


@owner_required
@require_POST
def webhook_action(request: AuthedHtmxRequest, endpoint_id: str) -> HttpResponse:
    """Edit, rotate the secret, send a test, or delete (the form's `action` says which)."""
    endpoint = _endpoint_or_404(request, endpoint_id)
    action = request.POST.get("action", "")
    try:
        if action == "update":
            webhooks.endpoint_update(
                endpoint=endpoint,
                name=request.POST.get("name", ""),
                url=request.POST.get("url", "").strip(),
                event_types=request.POST.getlist("event_types"),
            )
            messages.success(request, "Saved.")
        elif action == "rotate":
            webhooks.endpoint_rotate_secret(
                endpoint=endpoint, keep_old=request.POST.get("keep_old") == "on"
            )
            return _show_secret_once(request, endpoint)
        elif action == "test":
            result = webhooks.endpoint_test(
                endpoint=endpoint, event_type=request.POST.get("event_type", "")
            )
            return _webhook_page(request, endpoint, test_result=result)
        elif action == "delete":
            webhooks.endpoint_delete(endpoint=endpoint)
            messages.success(request, f"Deleted the webhook endpoint {endpoint.name}.")
            return redirect("accounts:settings")
    except ServiceError as exc:
        messages.error(request, exc.message)
    return redirect("accounts:webhook", endpoint.public_id)
