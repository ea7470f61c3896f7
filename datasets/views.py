"""Browser pages for datasets."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from datasets import selectors


@org_required
@require_GET
def file_list(request: AuthedHtmxRequest) -> HttpResponse:
    files = selectors.file_list_for_org(organization=request.organization)
    return render(request, "datasets/list.html", {"files": files})
