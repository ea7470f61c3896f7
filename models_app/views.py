"""Browser pages for the model registry: list, detail, delete, and the downloads (the merged model,
the adapter or weights), each built by a worker on request and then streamed."""

from __future__ import annotations

import json
import logging
from typing import Any

from django.contrib import messages
from django.http import FileResponse, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.http import AuthedHtmxRequest
from accounts.models import Membership
from accounts.views import org_required, owner_required
from common import downloads
from common.downloads import ExportBox, render_box, stream
from common.errors import ServiceError
from jobs import metric_format
from models_app import files, selectors, services
from models_app.models import Export, FineTunedModel, UsageRecord

logger = logging.getLogger(__name__)

SAMPLE_COUNT = 2
SAMPLE_MAX_TOKENS = 32


@org_required
@require_GET
def model_list(request: AuthedHtmxRequest) -> HttpResponse:
    org = request.organization
    usage = selectors.usage_totals_by_model(organization=org)
    models = list(selectors.model_list_for_org(organization=org))
    bases = list(selectors.base_model_list())
    context = {
        "models": [(m, usage.get(m.name)) for m in models],
        "bases": [(b, usage.get(b.name)) for b in bases],
    }
    return render(request, "models_app/list.html", context)


def _is_owner(request: AuthedHtmxRequest) -> bool:
    return request.user.is_superuser or request.membership.is_owner


@org_required
@require_GET
def model_detail(request: AuthedHtmxRequest, name: str) -> HttpResponse:
    model = selectors.model_get_for_org(organization=request.organization, name=name)
    context = {
        "model": model,
        "job": model.job,
        **_metrics_context(model),
        "usage": selectors.usage_by_day(organization=request.organization, model_name=model.name),
        "is_owner": _is_owner(request),
        "merged_export": _export_box(request, model, Export.Kind.MERGED),
        "files_export": _export_box(request, model, Export.Kind.MODEL_FILES),
        "has_files": (files.adapter_dir(model) or files.weights_dir(model)) is not None,
        "sample_count": SAMPLE_COUNT,
    }
    return render(request, "models_app/detail.html", context)


def _metrics_context(model: FineTunedModel) -> dict[str, Any]:
    job = model.job
    metrics = (job.final_metrics or selectors.job_final_metrics(job=job)) if job else {}
    return {
        "metrics_rows": metric_format.metrics_table(metrics),
        "metrics_title": "Final metrics of the training job",
        "classifier_warning": metric_format.classifier_warning(metrics),
    }


def _sample_prompts(model: FineTunedModel) -> list[dict[str, Any]]:
    """Up to SAMPLE_COUNT prompts from the job's training file (what the model was taught)."""
    job = model.job
    if job is None:
        return []
    prompts: list[dict[str, Any]] = []
    try:
        with job.training_file.blob.open("rb") as handle:
            for raw in handle:
                if len(prompts) == SAMPLE_COUNT:
                    break
                try:
                    row = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("prompt"), str):
                    prompts.append({"prompt": row["prompt"]})
                elif isinstance(row, dict) and isinstance(row.get("messages"), list):
                    # The conversation up to (not including) its last assistant turn.
                    turns = row["messages"]
                    while (
                        turns
                        and isinstance(turns[-1], dict)
                        and turns[-1].get("role") == "assistant"
                    ):
                        turns = turns[:-1]
                    if turns:
                        prompts.append({"messages": turns})
    except (OSError, ValueError):
        logger.info("no sample prompts for %s: training file unreadable", model.name)
    return prompts


@org_required
@require_POST
def model_samples(request: AuthedHtmxRequest, name: str) -> HttpResponse:
    """Sample completions from the training prompts, greedy (the #samples fragment).

    Only when the user asks (the page's button): the inference service generates them, and
    they count in the org's usage as kind "samples", not as the user's own requests."""
    from playground import services as inference

    model = selectors.model_get_for_org(organization=request.organization, name=name)
    caller = inference.Caller(
        organization=request.organization,
        user=request.user,
        usage_kind=UsageRecord.Kind.SAMPLES,
    )
    samples = []
    for prompt in _sample_prompts(model) or [{"prompt": "Hello"}]:
        body = {"model": model.name, "max_tokens": SAMPLE_MAX_TOKENS, "temperature": 0, **prompt}
        try:
            if "messages" in prompt:
                result = inference.chat_completion_create(caller=caller, body=body)
                assert isinstance(result, dict)
                text = result["choices"][0]["message"]["content"]
                shown = prompt["messages"][-1].get("content", "")
            else:
                result = inference.completion_create(caller=caller, body=body)
                assert isinstance(result, dict)
                text, shown = result["choices"][0]["text"], prompt["prompt"]
            samples.append({"prompt": shown, "completion": text, "error": None})
        except ServiceError as exc:
            samples.append({"prompt": str(prompt), "completion": "", "error": exc.message})
    return render(request, "models_app/detail.html#samples", {"samples": samples, "model": model})


@owner_required
@require_http_methods(["GET", "POST"])
def model_delete(request: AuthedHtmxRequest, name: str) -> HttpResponse:
    """GET asks for confirmation; POST deletes (owners only, as in the API)."""
    model = selectors.model_get_for_org(organization=request.organization, name=name)
    if request.method == "GET":
        return render(request, "models_app/confirm_delete.html", {"model": model})
    services.model_delete(model=model, by_role=Membership.Role.OWNER)
    messages.success(request, f"Deleted {model.name}.")
    return redirect("models_app:list")


def _export_box(
    request: AuthedHtmxRequest, model: FineTunedModel, kind: str, error: str | None = None
) -> ExportBox:
    lora = model.method == FineTunedModel.Method.LORA
    if kind == Export.Kind.MERGED:
        urls = ("models_app:export", "models_app:export_status", "models_app:merged_download")
        words = ("Export a merged model", "Merging the adapter into the base…", "Merged model")
        dom_id, testid = "export-status", "merged"
    else:
        urls = ("models_app:adapter_prepare", "models_app:adapter_status",
                "models_app:adapter_download")  # fmt: skip
        what = "adapter" if lora else "weights"
        ready = "Adapter: safetensors + config" if lora else "Weights"
        words = (f"Prepare the {what} download", f"Zipping the {what}…", ready)
        dom_id, testid = "adapter-export", "adapter"
    start, status, download = (reverse(u, args=[model.name]) for u in urls)
    return ExportBox(
        dom_id=dom_id,
        testid=testid,
        state=services.export_state(kind=kind, subject=model),
        start_url=start,
        status_url=status,
        download_url=download,
        prepare=words[0],
        preparing=words[1],
        ready=words[2],
        format="zip",
        error=error,
    )


@org_required
@require_POST
def export_start(request: AuthedHtmxRequest, name: str, kind: str) -> HttpResponse:
    """Queue the build of a model's download (merged, or its adapter/weights) on a worker."""
    model = selectors.model_get_for_org(organization=request.organization, name=name)
    return downloads.prepare(
        request,
        lambda: services.export_start(kind=kind, subject=model),
        lambda error: _export_box(request, model, kind, error),
        reverse("models_app:detail", kwargs={"name": model.name}),
    )


@org_required
@require_GET
@vary_on_headers("HX-Request")
def export_status(request: AuthedHtmxRequest, name: str, kind: str) -> HttpResponse:
    model = selectors.model_get_for_org(organization=request.organization, name=name)
    return render_box(request, _export_box(request, model, kind))


@org_required
@require_GET
def export_download(request: AuthedHtmxRequest, name: str, kind: str) -> FileResponse:
    """The built file, streamed; 404 until a worker has built it."""
    model = selectors.model_get_for_org(organization=request.organization, name=name)
    handle = services.export_open(kind=kind, subject=model)
    if kind == Export.Kind.MERGED:
        suffix = "merged"
    else:
        suffix = "adapter" if model.method == FineTunedModel.Method.LORA else "weights"
    return stream(handle, f"{model.name.replace(':', '_')}-{suffix}.zip")
