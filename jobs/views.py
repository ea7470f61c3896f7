"""Browser pages for fine-tune jobs: list, create form with a pre-flight estimate, live detail."""

from __future__ import annotations

import json

from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from config.api import ApiError
from datasets.selectors import file_find_for_org
from jobs import charts, forecast, selectors, services
from jobs.forms import JobCreateForm
from jobs.models import FineTuneJob
from models_app.selectors import base_model_find, model_find_for_org

DETAIL = "jobs/detail.html"
LIST = "jobs/list.html"


def _job_or_404(request: AuthedHtmxRequest, job_id: str) -> FineTuneJob:
    job = selectors.job_find_for_org(organization=request.organization, job_id=job_id)
    if job is None:
        raise Http404("No such job.")
    return job


@org_required
@require_GET
@vary_on_headers("HX-Request")
def job_list(request: AuthedHtmxRequest) -> HttpResponse:
    jobs = selectors.job_list_for_org(organization=request.organization)
    jobs = jobs.select_related("parent_job")[:200]  # forecast runs link to their parent
    polling = any(not j.is_finished for j in jobs)
    template = f"{LIST}#job-table" if request.htmx else LIST
    return render(request, template, {"jobs": jobs, "polling": polling})


@org_required
@require_http_methods(["GET", "POST"])
def job_create(request: AuthedHtmxRequest) -> HttpResponse:
    org = request.organization
    form = JobCreateForm(request.POST or None, organization=org)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.job_create(
                organization=org, created_by=request.user, req=form.to_request()
            )
        except ApiError as exc:
            field = exc.param if exc.param in form.fields else None
            form.add_error(field, exc.message)
        else:
            return redirect(job)
    return render(request, "jobs/create.html", {"form": form})


@org_required
@require_GET
def job_preflight(request: AuthedHtmxRequest) -> HttpResponse:
    """HTMX fragment: the auto hyperparameters and the expected training time."""
    org = request.organization
    file = file_find_for_org(organization=org, file_id=request.GET.get("training_file", ""))
    name = request.GET.get("model", "")
    fine_tune = model_find_for_org(organization=org, name=name)
    base = fine_tune.base if fine_tune else base_model_find(name=name)
    estimate = None
    if file is not None and base is not None:

        def number(key: str, cast: type) -> object:
            try:
                return cast(request.GET[key]) if request.GET.get(key) else None
            except ValueError:
                return None

        estimate = selectors.job_preflight(
            examples=file.example_count,
            tokens=file.token_count,
            base_model_id=base.pk,
            n_epochs=number("n_epochs", int),  # type: ignore[arg-type]
            batch_size=number("batch_size", int),  # type: ignore[arg-type]
            learning_rate_multiplier=number("learning_rate_multiplier", float),  # type: ignore[arg-type]
            scaling_forecast=request.GET.get("scaling_forecast") == "on",
        )
    return render(request, "jobs/create.html#preflight", {"estimate": estimate, "file": file})


@org_required
@require_GET
@vary_on_headers("HX-Request")
def job_detail(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    job = _job_or_404(request, job_id)
    page = forecast.forecast_page(job)
    context = {
        "job": job,
        "events": job.events.filter(type="message").order_by("id"),
        "chart_data": json.dumps(charts.chart_data(job)),
        "queue_position": selectors.queue_position(job) if job.status == "queued" else None,
        # A forecast parent keeps polling after it finishes, until its ¼ and ½ runs have too.
        "polling": not job.is_finished or page["forecast_unfinished"],
        "forecast_figure": (
            charts.forecast_figure(job.forecast)
            if job.forecast and job.forecast.get("status") == "succeeded"
            else None
        ),
        **page,
    }
    template = f"{DETAIL}#job-live" if request.htmx else DETAIL
    return render(request, template, context)


@org_required
@require_POST
def job_cancel(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    job = _job_or_404(request, job_id)
    services.job_cancel(job=job)  # a no-op if it finished meanwhile
    return redirect(job)


@org_required
@require_GET
def job_results(request: AuthedHtmxRequest, job_id: str) -> FileResponse:
    job = _job_or_404(request, job_id)
    if job.result_file is None:
        raise Http404("This job has no results file yet.")
    return FileResponse(
        job.result_file.blob.open("rb"),
        as_attachment=True,
        filename=f"{job.public_id}_compiled_results.csv",
        content_type="text/csv",
    )
