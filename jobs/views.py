"""Browser pages for fine-tune jobs: list, create form with a pre-flight estimate, live detail."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotModified,
    JsonResponse,
    QueryDict,
)
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.timesince import timesince
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from common import downloads
from common.conditional import etag_of, is_fresh, tag
from common.downloads import ExportBox, render_box, stream
from common.errors import ServiceError
from common.forms import form_error
from common.renders import render_shared
from jobs import charts, controls, forecast, metric_format, preflight, selectors, services
from jobs.forms import JobCreateForm, humanize
from jobs.models import Checkpoint, FineTuneJob
from models_app import services as model_services
from models_app.models import Export
from models_app.selectors import job_final_metrics, model_find_for_org

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
    """Every job of the org, newest first, filtered by status, base model and creator, and
    searched by id, suffix or model name (the filters are GET parameters: a link keeps them)."""
    org = request.organization
    filters = {k: request.GET.get(k, "").strip() for k in ("status", "model", "creator", "q")}
    jobs = list(selectors.job_list_filtered(organization=org, **filters)[:200])
    # A paused job changes only when someone resumes it: no reason to keep polling for it.
    polling = any(not j.is_finished and j.status != FineTuneJob.Status.PAUSED for j in jobs)
    for job in jobs:
        job.final_metric = metric_format.headline(job.final_metrics)  # type: ignore[attr-defined]  # for the template
    context = {
        "jobs": jobs,
        "polling": polling,
        "filters": filters,
        "query": request.GET.urlencode(),
        "statuses": FineTuneJob.Status.values,
        "bases": selectors.job_bases_for_org(organization=org),
        "creators": selectors.job_creators_for_org(organization=org),
    }
    template = f"{LIST}#job-table" if request.htmx else LIST
    return render(request, template, context)


@org_required
@require_http_methods(["GET", "POST"])
@vary_on_headers("HX-Request")
def job_create(request: AuthedHtmxRequest) -> HttpResponse:
    """The create form. GET parameters pre-fill it (the dataset page's "Fine-tune with these
    files"); `?part=positive-class` (HTMX) re-renders the positive class for the chosen files."""
    org = request.organization
    if request.htmx and request.GET.get("part") == "positive-class":
        form = JobCreateForm(request.GET, organization=org)
        return render(request, "jobs/create.html#positive-class", {"form": form})
    initial = {k: v for k, v in request.GET.dict().items() if k != "part"}
    form = JobCreateForm(request.POST or None, organization=org, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.job_create(
                organization=org, created_by=request.user, req=form.to_request()
            )
        except ServiceError as exc:
            # `method.dpo.hyperparameters.beta` is the form's `beta`, `method.type` its
            # `method_type`.
            form_error(
                form,
                exc,
                aliases={"method.type": "method_type"},
                words=lambda message: humanize(message, form),
            )
        else:
            return redirect(job)
    # The pre-flight line is rendered with the page (also after an error), not fetched after.
    params = request.POST if request.method == "POST" else _initial_params(initial)
    context = {
        "form": form,
        **preflight.preflight_context(organization=org, params=params),
        **preflight.file_hints(organization=org, params=params),
    }
    return render(request, "jobs/create.html", context)


def _initial_params(initial: dict[str, str]) -> QueryDict:
    params = QueryDict(mutable=True)
    params.update(initial)
    return params


@org_required
@require_GET
def job_preflight(request: AuthedHtmxRequest) -> HttpResponse:
    """HTMX fragment: the hyperparameters, tokens, time and memory the form's values mean."""
    context = preflight.preflight_context(organization=request.organization, params=request.GET)
    return render(request, "jobs/create.html#preflight", context)


@org_required
@require_GET
@vary_on_headers("HX-Request")
def job_detail(request: AuthedHtmxRequest, job_id: str) -> HttpResponseBase:
    if request.htmx:
        # The live partial is polled every 2 s by every open job page: unchanged, a 304,
        # decided from the job's own row (its related rows are fetched only to render).
        row = selectors.job_row_for_org(organization=request.organization, job_id=job_id)
        if row is None:
            raise Http404("No such job.")
        shown = _Shown.read(request, row)
        version = _live_version(row, shown)
        etag = _live_etag(request, version)
        if is_fresh(request, etag):
            return tag(HttpResponseNotModified(), etag)
        # Changed since this poller's copy: each version is rendered once for all of its
        # pollers (common.renders), after the access check above.
        response = render_shared(
            request,
            f"{DETAIL}#job-live",
            key=("job-live", row.pk, version),
            context=lambda: _detail_context(_job_or_404(request, job_id), shown),
        )
        return tag(response, etag)
    job = _job_or_404(request, job_id)
    return render(request, DETAIL, _detail_context(job, _Shown.read(request, job)))


@dataclass(frozen=True)
class _Shown:
    """What the live partial's ETag and its render both read: read once per request."""

    checkpoints: list[Checkpoint]
    # A deleted model keeps its name on the job, but nothing may link to it any more.
    model_alive: bool

    @classmethod
    def read(cls, request: AuthedHtmxRequest, job: FineTuneJob) -> _Shown:
        checkpoints = list(selectors.checkpoint_list_for_job(job=job))
        for checkpoint in checkpoints:
            checkpoint.job = job  # their links name it: not one query each
        return cls(
            checkpoints=checkpoints,
            model_alive=bool(
                job.fine_tuned_model
                and model_find_for_org(organization=request.organization, name=job.fine_tuned_model)
                is not None
            ),
        )


def _live_version(job: FineTuneJob, shown: _Shown) -> tuple[Any, ...]:
    """Everything the live partial shows: the job row (its last report as the page words it,
    "2 minutes ago", not the timestamp each heartbeat moves), what the page shows beside it and
    whether the model is still there. Nothing of the viewer: the partial shows none of it but
    the CSRF token of its forms (see common.renders)."""
    row = [
        getattr(job, f.attname)
        for f in job._meta.concrete_fields
        if f.attname not in ("heartbeat_at", "updated_at")
    ]
    reported = timesince(job.heartbeat_at) if job.heartbeat_at else None
    return (
        row,
        reported,
        selectors.job_page_version(job=job, checkpoints=shown.checkpoints),
        shown.model_alive,
    )


def _live_etag(request: AuthedHtmxRequest, version: tuple[Any, ...]) -> str:
    """The version as this viewer's browser holds it: with their CSRF token in the forms."""
    get_token(request)  # the forms' CSRF secret, made now if this is the session's first
    return etag_of(version, request.user.pk, request.META.get("CSRF_COOKIE"))


def _detail_context(job: FineTuneJob, shown: _Shown) -> dict[str, Any]:
    """The page's context; its live partial reads nothing else (not even the request)."""
    page = forecast.forecast_page(job)
    return {
        "job": job,
        "events": selectors.job_messages(job=job),
        "charts_version": charts.charts_version(job),
        "queue_position": selectors.queue_position(job) if job.status == "queued" else None,
        # A forecast parent keeps polling after it finishes, until its ¼ and ½ runs have too;
        # a paused job changes only when someone resumes it, which reloads the page.
        "polling": (not job.is_finished and job.status != FineTuneJob.Status.PAUSED)
        or page["forecast_unfinished"],
        # Each with its download's state (a worker zips it when asked for).
        "checkpoints": [
            (c, checkpoint_box(c, state=state))
            for c, state in zip(
                shown.checkpoints,
                model_services.export_states(
                    kind=Export.Kind.CHECKPOINT, subjects=shown.checkpoints
                ),
                strict=True,
            )
        ],
        # The whole-validation-set columns, where some checkpoint has them (best-checkpoint
        # selection scores each epoch's; docs/adr/0018).
        "checkpoint_columns": {
            key
            for key in ("full_valid_loss", "classification_accuracy", "generation_rouge_l")
            if any(c.metrics.get(key) is not None for c in shown.checkpoints)
        },
        "best_step": (job.final_metrics or {}).get("best_checkpoint_step"),
        # The devices of the worker that runs (or ran) it, as it announced them (jobs.fleet).
        "worker_devices": selectors.worker_find(name=job.worker),
        "forecast_figure": (
            charts.forecast_figure(page["forecast"])
            if page["forecast"] and page["forecast"].get("status") == "succeeded"
            else None
        ),
        "model_alive": shown.model_alive,
        **_metrics_context(job),
        **page,
    }


def _metrics_context(job: FineTuneJob) -> dict[str, Any]:
    """The metrics table: the final ones once it succeeded, else the latest step's."""
    metrics = job.final_metrics or job_final_metrics(job=job)
    return {
        "metrics_rows": metric_format.metrics_table(metrics),
        "metrics_title": "Final metrics" if job.final_metrics else "Latest metrics",
        "classifier_warning": metric_format.classifier_warning(metrics),
    }


@org_required
@require_GET
def job_charts(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    """The metric charts' data (JSON): the page draws them once and updates them from this
    whenever a poll brings a new `data-charts-version`."""
    job = _job_or_404(request, job_id)
    response = JsonResponse(charts.chart_data(job), safe=False)
    response["Cache-Control"] = "private, no-cache"
    return response


@org_required
@require_POST
def job_cancel(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    job = _job_or_404(request, job_id)
    services.job_cancel(job=job)  # a no-op if it finished meanwhile
    return redirect(job)


@org_required
@require_POST
def job_pause(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    return _control(request, job_id, controls.job_pause)


@org_required
@require_POST
def job_resume(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    return _control(request, job_id, controls.job_resume)


def _control(request: AuthedHtmxRequest, job_id: str, action: Any) -> HttpResponse:
    job = _job_or_404(request, job_id)
    try:
        action(job=job)
    except ServiceError as exc:  # the status changed meanwhile: say so on the page
        messages.error(request, exc.message)
    return redirect(job)


@org_required
@require_http_methods(["GET", "POST"])
@vary_on_headers("HX-Request")
def job_compare(request: AuthedHtmxRequest, job_id: str) -> HttpResponse:
    """Compare checkpoints: POST queues the scoring (a worker task); the page polls its table."""
    job = _job_or_404(request, job_id)
    if request.method == "POST":
        try:
            controls.comparison_start(job=job)
        except ServiceError as exc:
            messages.error(request, exc.message)
        return redirect("jobs:compare", job.public_id)
    comparison = selectors.comparison_for_job(job=job)
    rows = comparison.rows if comparison is not None else []
    columns = [c for c in COMPARE_COLUMNS if any(c[0] in r["metrics"] for r in rows)]
    # The best value of each column is marked (lowest loss, highest everything else).
    best = {}
    for key, _ in columns:
        present = [r["metrics"][key] for r in rows if r["metrics"].get(key) is not None]
        best[key] = min(present) if key.endswith("loss") else max(present)
    table = [
        {
            **r,
            "cells": [
                {"value": r["metrics"].get(key), "best": r["metrics"].get(key) == best[key]}
                for key, _ in columns
            ],
        }
        for r in rows
    ]
    context = {
        "job": job,
        "comparison": comparison,
        "table": table,
        "columns": [title for _, title in columns],
        "checkpoints": selectors.checkpoint_list_for_job(job=job),
        "polling": comparison is not None and not comparison.is_finished,
    }
    template = "jobs/compare.html#comparison" if request.htmx else "jobs/compare.html"
    return render(request, template, context)


# (metric key, column title), in table order; a column shows when some row has it.
COMPARE_COLUMNS = [
    ("full_validation_loss", "Validation loss"),
    ("full_validation_token_accuracy", "Token accuracy"),
    ("full_validation_sequence_accuracy", "Sequence accuracy"),
    ("classification/accuracy", "Accuracy"),
    ("classification/precision", "Precision"),
    ("classification/recall", "Recall"),
    ("classification/f1.0", "F1"),
    ("classification/auroc", "AUROC"),
    ("classification/auprc", "AUPRC"),
    ("classification/weighted_f1_score", "Weighted F1"),
    ("generation/rouge_l", "ROUGE-L"),
]


def _checkpoint_or_404(request: AuthedHtmxRequest, job_id: str, checkpoint_id: str) -> Checkpoint:
    job = _job_or_404(request, job_id)
    checkpoint = selectors.checkpoint_list_for_job(job=job).filter(public_id=checkpoint_id).first()
    if checkpoint is None:
        raise Http404("No such checkpoint.")
    return checkpoint


def checkpoint_box(
    checkpoint: Checkpoint, error: str | None = None, *, state: dict[str, Any] | None = None
) -> ExportBox:
    """`state`: its export_state, when the page read every checkpoint's at once."""
    args = [checkpoint.job.public_id, checkpoint.public_id]
    if state is None:
        state = model_services.export_state(kind=Export.Kind.CHECKPOINT, subject=checkpoint)
    return ExportBox(
        dom_id=f"export-{checkpoint.public_id}",
        testid="checkpoint",
        state=state,
        start_url=reverse("jobs:checkpoint_prepare", args=args),
        status_url=reverse("jobs:checkpoint_status", args=args),
        download_url=reverse("jobs:checkpoint_download", args=args),
        prepare="Prepare download",
        preparing="Zipping…",
        ready="Download",
        format="zip",
        error=error,
    )


@org_required
@require_POST
def checkpoint_prepare(request: AuthedHtmxRequest, job_id: str, checkpoint_id: str) -> HttpResponse:
    """Queue the zip of an exposed checkpoint's adapter (or weights) on a worker."""
    checkpoint = _checkpoint_or_404(request, job_id, checkpoint_id)
    return downloads.prepare(
        request,
        lambda: model_services.export_start(kind=Export.Kind.CHECKPOINT, subject=checkpoint),
        lambda error: checkpoint_box(checkpoint, error),
        checkpoint.job,
    )


@org_required
@require_GET
@vary_on_headers("HX-Request")
def checkpoint_status(request: AuthedHtmxRequest, job_id: str, checkpoint_id: str) -> HttpResponse:
    return render_box(request, checkpoint_box(_checkpoint_or_404(request, job_id, checkpoint_id)))


@org_required
@require_GET
def checkpoint_download(
    request: AuthedHtmxRequest, job_id: str, checkpoint_id: str
) -> FileResponse:
    """An exposed checkpoint's zip, as a worker built it; 404 until then."""
    checkpoint = _checkpoint_or_404(request, job_id, checkpoint_id)
    handle = model_services.export_open(kind=Export.Kind.CHECKPOINT, subject=checkpoint)
    return stream(handle, f"{checkpoint.name.replace(':', '_')}.zip")


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
