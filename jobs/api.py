"""/v1/fine-tunes (legacy, what the 0.28 CLI uses) and /v1/fine_tuning/jobs (current SDK)."""

from __future__ import annotations

import re
from types import EllipsisType
from typing import Any

from django.http import HttpResponseBase
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from common.conditional import etag_of, is_fresh, tag
from common.errors import ServiceError
from common.pagination import cursor_page, parse_limit
from jobs import controls, selectors, services, streams
from jobs.models import FineTuneJob
from jobs.serializers import (
    checkpoint_json,
    current_event_json,
    current_job_json,
    legacy_event_json,
    legacy_job_json,
)

LEGACY_FIELDS = (
    "training_file",
    "validation_file",
    "model",
    "suffix",
    "n_epochs",
    "batch_size",
    "learning_rate_multiplier",
    "prompt_loss_weight",
    "compute_classification_metrics",
    "classification_n_classes",
    "classification_positive_class",
    "classification_betas",
)


def body_of(request: AuthedApiRequest) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        raise ServiceError("The request body must be a JSON object.", param=None)
    return dict(data.items())


def job_or_404(request: AuthedApiRequest, job_id: str, *, row_only: bool = False) -> FineTuneJob:
    """The org's job; `row_only`: without its related rows (for the polled events lists)."""
    find = selectors.job_row_for_org if row_only else selectors.job_find_for_org
    job = find(organization=api_org(request), job_id=job_id)
    if job is None:
        raise ServiceError(f"No such fine-tune job: {job_id}", status=404, param="id")
    return job


def cancel_or_400(request: AuthedApiRequest, job_id: str) -> FineTuneJob:
    """Cancel; a finished job is a 400 (not 409, which the current SDK would retry)."""
    job = job_or_404(request, job_id)
    if not services.job_cancel(job=job):
        raise ServiceError(f"Cannot cancel a job that is already {job.status}.", param="id")
    return job


def _tunery_extensions(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("training_method", FineTuneJob.Method.LORA)
    forecast = body.get("scaling_forecast", False)
    if not isinstance(forecast, bool):
        raise ServiceError("scaling_forecast must be a boolean.", param="scaling_forecast")
    # Checked in services.job_create (the form shares it); absent means "auto".
    early_stopping = body.get("early_stopping", "auto")
    return {
        "method": method,
        "scaling_forecast": forecast,
        "early_stopping": early_stopping,
        # Checked in services.job_create (against the announced workers, too).
        "device_class": body.get("device_class"),
        "device_count": body.get("device_count"),
    }


# --- legacy ---------------------------------------------------------------------------------


# The legacy list had no paging at OpenAI; here it pages like every other list (`limit`,
# `after`, `has_more`), oldest first. The 0.28 CLI asks without `limit`, so its default is
# large enough that a team's whole history normally fits one page.
LEGACY_LIST_LIMIT = 100
LEGACY_LIST_MAX = 1000


class LegacyJobListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        jobs = selectors.job_list_for_org(organization=api_org(request))
        page, has_more = cursor_page(
            jobs.order_by("created_at", "id"),
            after=request.query_params.get("after"),
            limit=parse_limit(
                request.query_params.get("limit"),
                default=LEGACY_LIST_LIMIT,
                maximum=LEGACY_LIST_MAX,
            ),
        )
        data = [legacy_job_json(j, with_events=False) for j in page]
        return Response({"object": "list", "data": data, "has_more": has_more})

    def post(self, request: AuthedApiRequest) -> Response:
        body = body_of(request)
        legacy_fields: dict[str, Any] = {k: body.get(k) for k in LEGACY_FIELDS}
        req = services.JobRequest(
            api=FineTuneJob.Api.LEGACY,
            **legacy_fields,
            **_tunery_extensions(body),
        )
        if req.model is None:
            req.model = "curie"  # the legacy default; an alias of the embedded model
        job = services.job_create(organization=api_org(request), created_by=_user(request), req=req)
        return Response(legacy_job_json(job))


class LegacyJobDetailApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> Response:
        return Response(legacy_job_json(job_or_404(request, job_id)))


class LegacyJobCancelApi(APIView):
    def post(self, request: AuthedApiRequest, job_id: str) -> Response:
        return Response(legacy_job_json(cancel_or_400(request, job_id)))


class LegacyJobEventsApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> HttpResponseBase:
        job = job_or_404(request, job_id, row_only=True)
        if request.query_params.get("stream", "").lower() == "true":
            return streams.legacy_event_stream(job.pk)
        etag = etag_of("legacy", job.pk, selectors.job_events_version(job=job))
        if is_fresh(request, etag):
            return tag(Response(status=304), etag)
        events = selectors.job_messages(job=job)
        return tag(
            Response(
                {
                    "object": "list",
                    "data": [legacy_event_json(e) for e in events],
                    "has_more": False,
                }
            ),
            etag,
        )


# --- current --------------------------------------------------------------------------------


HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier", "prompt_loss_weight")
# Each `method.type`'s hyperparameters (openai's SupervisedHyperparameters, DpoHyperparameters;
# prompt_loss_weight is Tunery's, kept from the legacy API).
METHOD_HYPERPARAMETERS = {
    "supervised": HYPERPARAMETERS,
    "dpo": ("n_epochs", "batch_size", "learning_rate_multiplier", "beta"),
}
NOT_YET = {"reinforcement": "Reinforcement fine-tuning"}


def _object(value: Any, param: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ServiceError(f"{param} must be an object.", param=param)
    return value


def _current_method(body: dict[str, Any]) -> dict[str, Any]:
    """The method and hyperparameters of a current-API body: `method` ({type, supervised | dpo:
    {hyperparameters}}) or the deprecated top-level `hyperparameters` (supervised, or DPO's
    shared keys when `method.type` is dpo without hyperparameters of its own).

    Every level of `method` is type-checked here, so a wrong type anywhere in it is a 400
    naming where, never an AttributeError further down.
    """
    hyper = _object(body.get("hyperparameters"), "hyperparameters") or {}
    where = "hyperparameters"
    kind = "supervised"
    method = _object(body.get("method"), "method")
    if method is not None:
        kind = method.get("type", "supervised")
        if not isinstance(kind, str):
            raise ServiceError(
                f"method.type must be 'supervised' or 'dpo', got {type(kind).__name__}.",
                param="method.type",
            )
        if kind in NOT_YET:
            raise ServiceError(
                f"{NOT_YET[kind]} (method.type {kind!r}) is not supported yet; use "
                "'supervised' or 'dpo'.",
                param="method.type",
            )
        if kind not in METHOD_HYPERPARAMETERS:
            raise ServiceError(
                f"method.type must be 'supervised' or 'dpo', got {kind[:40]!r}.",
                param="method.type",
            )
        unknown = sorted(set(method) - {"type", kind})
        if unknown:
            raise ServiceError(
                f"Unknown or unsupported parameter {unknown[0]!r} in method of type {kind!r}.",
                param=f"method.{unknown[0]}",
            )
        settings = _object(method.get(kind), f"method.{kind}") or {}
        unknown = sorted(set(settings) - {"hyperparameters"})
        if unknown:
            raise ServiceError(
                f"Unknown parameter {unknown[0]!r} in method.{kind}.",
                param=f"method.{kind}.{unknown[0]}",
            )
        inner = _object(settings.get("hyperparameters"), f"method.{kind}.hyperparameters")
        if inner is not None:
            hyper, where = inner, f"method.{kind}.hyperparameters"
    allowed = METHOD_HYPERPARAMETERS[kind] if where != "hyperparameters" else HYPERPARAMETERS
    unknown = sorted(set(hyper) - set(allowed))
    if unknown:
        raise ServiceError(f"Unknown hyperparameter {unknown[0]!r}.", param=f"{where}.{unknown[0]}")
    values = {k: hyper.get(k) for k in HYPERPARAMETERS}
    return {**values, "method_type": kind, "beta": hyper.get("beta")}


METADATA_FILTER = re.compile(r"metadata\[([^\[\]]{1,64})\]")


def _metadata_filters(request: AuthedApiRequest) -> dict[str, str] | None | EllipsisType:
    """OpenAI's `metadata[key]=value` filters (exact match) as {key: value}; None for
    `metadata=null` (jobs without metadata); `...` when there is no metadata filter.

    A malformed filter, or a key that isn't a valid metadata key, is a 400 naming `metadata`.
    """
    filters: dict[str, str] = {}
    without = False
    for name, value in request.query_params.dict().items():
        if not name.startswith("metadata"):
            continue
        if name == "metadata":
            if value != "null":
                raise ServiceError(
                    "Filter on metadata with metadata[key]=value, or metadata=null for jobs "
                    "without metadata.",
                    param="metadata",
                )
            without = True
            continue
        match = METADATA_FILTER.fullmatch(name)
        if match is None:
            raise ServiceError(
                f"Malformed metadata filter {name!r}: use metadata[key]=value with a key of "
                "1 to 64 characters and no brackets.",
                param="metadata",
            )
        key = match.group(1)
        services.check_metadata_key(key)
        filters[key] = value
    if without and filters:
        raise ServiceError("metadata=null can't be combined with metadata[key].", param="metadata")
    return None if without else (filters or ...)


class JobListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        jobs = selectors.job_list_for_org(organization=api_org(request))
        filters = _metadata_filters(request)
        if filters is not ...:
            jobs = selectors.job_list_filter_metadata(jobs, filters)
        page, has_more = cursor_page(
            jobs,
            after=request.query_params.get("after"),
            limit=parse_limit(request.query_params.get("limit"), default=20),
        )
        return Response(
            {"object": "list", "data": [current_job_json(j) for j in page], "has_more": has_more}
        )

    def post(self, request: AuthedApiRequest) -> Response:
        body = body_of(request)
        req = services.JobRequest(
            api=FineTuneJob.Api.CURRENT,
            model=body.get("model"),
            training_file=body.get("training_file"),
            validation_file=body.get("validation_file"),
            suffix=body.get("suffix"),
            seed=body.get("seed"),
            metadata=body.get("metadata"),
            integrations=body.get("integrations"),
            **_current_method(body),
            **_tunery_extensions(body),
        )
        job = services.job_create(organization=api_org(request), created_by=_user(request), req=req)
        return Response(current_job_json(job))


class JobDetailApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> Response:
        return Response(current_job_json(job_or_404(request, job_id)))


class JobCancelApi(APIView):
    def post(self, request: AuthedApiRequest, job_id: str) -> Response:
        return Response(current_job_json(cancel_or_400(request, job_id)))


class JobPauseApi(APIView):
    def post(self, request: AuthedApiRequest, job_id: str) -> Response:
        return Response(current_job_json(controls.job_pause(job=job_or_404(request, job_id))))


class JobResumeApi(APIView):
    def post(self, request: AuthedApiRequest, job_id: str) -> Response:
        return Response(current_job_json(controls.job_resume(job=job_or_404(request, job_id))))


class JobEventsApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> HttpResponseBase:
        job = job_or_404(request, job_id, row_only=True)
        after = request.query_params.get("after")
        limit = parse_limit(request.query_params.get("limit"), default=20)
        # Pollers ask for the newest page again and again: unchanged, it is a bodiless 304.
        etag = etag_of("current", job.pk, after, limit, selectors.job_events_version(job=job))
        if is_fresh(request, etag):
            return tag(Response(status=304), etag)
        page, has_more = cursor_page(
            selectors.job_events_newest_first(job=job), after=after, limit=limit
        )
        data = [current_event_json(e) for e in page]
        return tag(Response({"object": "list", "data": data, "has_more": has_more}), etag)


class JobCheckpointsApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> Response:
        job = job_or_404(request, job_id)
        page, has_more = cursor_page(
            selectors.checkpoint_list_for_job(job=job),
            after=request.query_params.get("after"),
            limit=parse_limit(request.query_params.get("limit"), default=10),
        )
        data = [checkpoint_json(c, job) for c in page]
        return Response(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": has_more,
            }
        )


def _user(request: AuthedApiRequest) -> Any:
    return request.auth.created_by
