"""The playground page: one model, or 2-3 side by side, with the same prompt and parameters.

Streaming: the page's script POSTs the form once per model to `playground:stream`, which
answers with the same server-sent events as `/v1/completions` with `stream=true`
(session-authenticated, CSRF-protected), and reads them with fetch(). EventSource cannot POST,
and polling would add latency to every token.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from common.errors import ServiceError
from config.api import error_body
from models_app import selectors
from playground import services
from playground.api import sse_response
from playground.forms import MAX_COMPARED, PlaygroundForm
from playground.snippets import snippets


def _model_choices(request: AuthedHtmxRequest) -> list[dict[str, Any]]:
    fine_tunes = selectors.model_list_for_org(organization=request.organization)
    choices = [
        {"name": m.name, "group": "Fine-tuned", "chat": m.base.has_chat_template}
        for m in fine_tunes
    ]
    choices += [
        {"name": c.name, "group": "Checkpoints", "chat": c.job.base_model.has_chat_template}
        for c in selectors.checkpoint_list_for_org(organization=request.organization)[:100]
    ]
    for grant in selectors.grants_received(organization=request.organization):
        usable = selectors.usable_model_find(
            organization=request.organization, name=grant.model_name
        )
        if usable is not None:  # still alive
            choices.append(
                {
                    "name": usable.name,
                    "group": "Shared with you",
                    "chat": usable.base.has_chat_template,
                }
            )
    choices += [
        {"name": b.name, "group": "Base", "chat": b.has_chat_template}
        for b in selectors.base_model_list()
    ]
    return choices


@org_required
@require_GET
def index(request: AuthedHtmxRequest) -> HttpResponse:
    choices = _model_choices(request)
    names = {c["name"] for c in choices}
    # ?model=A&model=B preselects a comparison (links from the model and job pages).
    asked = request.GET.getlist("model")
    wanted = [m for m in asked if m in names][:MAX_COMPARED]
    # A link to a deleted (or never shared) model says so, instead of silently opening another.
    missing = [m for m in asked if m not in names]
    if not wanted and choices:
        wanted = [choices[0]["name"]]
    selected = wanted + [""] * (MAX_COMPARED - len(wanted))
    context = {
        "form": PlaygroundForm(),
        "choices": choices,
        "selected": selected,
        "missing": missing,
    }
    return render(request, "playground/index.html", context)


def _form_error(form: PlaygroundForm) -> JsonResponse:
    field, errors = next(iter(form.errors.items()))
    return JsonResponse(error_body(f"{field}: {errors[0]}", param=field), status=400)


@org_required
@require_POST
def stream(request: AuthedHtmxRequest) -> HttpResponseBase:
    """One model's output as SSE chunks (the /v1 stream format), for the page's script."""
    form = PlaygroundForm(request.POST)
    if not form.is_valid():
        return _form_error(form)
    body = form.openai_body(request.POST.get("model", ""), stream=True)
    caller = services.Caller(organization=request.organization, user=request.user)
    try:
        if form.cleaned_data["mode"] == "chat":
            result = services.chat_completion_create(caller=caller, body=body)
        else:
            result = services.completion_create(caller=caller, body=body)
    except ServiceError as exc:
        body = error_body(exc.message, type=exc.type, param=exc.param, code=exc.code)
        return JsonResponse(body, status=exc.status_code)
    assert not isinstance(result, dict)  # stream=True always streams
    return sse_response(result)


@org_required
@require_POST
def code(request: AuthedHtmxRequest) -> HttpResponse:
    """The #code fragment: the request as curl, the SDK and the 0.28 CLI, per model."""
    form = PlaygroundForm(request.POST)
    models = [m for m in request.POST.getlist("models") if m][:MAX_COMPARED]
    if not form.is_valid():
        return render(request, "playground/index.html#code", {"errors": form.errors})
    base_url = request.build_absolute_uri("/v1").rstrip("/")
    examples = [
        {"model": m, **snippets(base_url, form.openai_body(m, stream=False))} for m in models
    ]
    return render(request, "playground/index.html#code", {"examples": examples})
