"""Browser pages for fine-tune jobs."""

from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from jobs import selectors


@org_required
@require_GET
def job_list(request: AuthedHtmxRequest) -> HttpResponse:
    jobs = selectors.job_list_for_org(organization=request.organization)
    return render(request, "jobs/list.html", {"jobs": jobs})
