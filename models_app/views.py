"""Browser pages for the model registry."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from models_app import selectors


@org_required
@require_GET
def model_list(request: AuthedHtmxRequest) -> HttpResponse:
    context = {
        "bases": selectors.base_model_list(),
        "models": selectors.model_list_for_org(organization=request.organization),
    }
    return render(request, "models_app/list.html", context)
