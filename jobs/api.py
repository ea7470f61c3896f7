"""/v1/fine-tunes (legacy, what the 0.28 CLI uses) and /v1/fine_tuning/jobs (current SDK)."""

from __future__ import annotations

from typing import Any

from django.http import StreamingHttpResponse
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from common.pagination import cursor_page, parse_limit
from config.api import ApiError
from jobs import selectors, services, streams
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
        raise ApiError("The request body must be a JSON object.", param=None)
    return dict(data.items())


def job_or_404(request: AuthedApiRequest, job_id: str) -> FineTuneJob:
    job = selectors.job_find_for_org(organization=api_org(request), job_id=job_id)
    if job is None:
        raise ApiError(f"No such fine-tune job: {job_id}", status=404, param="id")
    return job


def cancel_or_400(request: AuthedApiRequest, job_id: str) -> FineTuneJob:
    """Cancel; a finished job is a 400 (not 409, which the current SDK would retry)."""
    job = job_or_404(request, job_id)
    if not services.job_cancel(job=job):
        raise ApiError(f"Cannot cancel a job that is already {job.status}.", param="id")
    return job


def _tunery_extensions(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("training_method", FineTuneJob.Method.LORA)
    forecast = body.get("scaling_forecast", False)
    if not isinstance(forecast, bool):
        raise ApiError("scaling_forecast must be a boolean.", param="scaling_forecast")
    return {"method": method, "scaling_forecast": forecast}


# --- legacy ---------------------------------------------------------------------------------


class LegacyJobListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        jobs = selectors.job_list_for_org(organization=api_org(request))
        data = [legacy_job_json(j, with_events=False) for j in jobs.order_by("created_at", "id")]
        return Response({"object": "list", "data": data, "has_more": False})

    def post(self, request: AuthedApiRequest) -> Response:
        body = body_of(request)
        req = services.JobRequest(
            api=FineTuneJob.Api.LEGACY,
            **{k: body.get(k) for k in LEGACY_FIELDS},
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
    def get(self, request: AuthedApiRequest, job_id: str) -> Response | StreamingHttpResponse:
        job = job_or_404(request, job_id)
        if request.query_params.get("stream", "").lower() == "true":
            return streams.legacy_event_stream(job.pk)
        events = job.events.filter(type="message")
        return Response(
            {"object": "list", "data": [legacy_event_json(e) for e in events], "has_more": False}
        )


# --- current --------------------------------------------------------------------------------


def _current_hyperparameters(body: dict[str, Any]) -> dict[str, Any]:
    method = body.get("method")
    hyper = body.get("hyperparameters") or {}
    if method is not None:
        if not isinstance(method, dict) or method.get("type", "supervised") != "supervised":
            raise ApiError(
                "Only supervised fine-tuning is supported (method.type 'supervised').",
                param="method.type",
            )
        hyper = (method.get("supervised") or {}).get("hyperparameters") or hyper
    if not isinstance(hyper, dict):
        raise ApiError("hyperparameters must be an object.", param="hyperparameters")
    unknown = set(hyper) - {
        "n_epochs",
        "batch_size",
        "learning_rate_multiplier",
        "prompt_loss_weight",
    }
    if unknown:
        raise ApiError(f"Unknown hyperparameter {sorted(unknown)[0]!r}.", param="hyperparameters")
    return {
        k: hyper.get(k)
        for k in ("n_epochs", "batch_size", "learning_rate_multiplier", "prompt_loss_weight")
    }


class JobListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        jobs = selectors.job_list_for_org(organization=api_org(request))
        for key, value in request.query_params.items():
            if key.startswith("metadata[") and key.endswith("]"):
                jobs = jobs.filter(**{f"metadata__{key[9:-1]}": value})
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
            **_current_hyperparameters(body),
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


class JobEventsApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> Response:
        job = job_or_404(request, job_id)
        page, has_more = cursor_page(
            job.events.order_by("-id"),
            after=request.query_params.get("after"),
            limit=parse_limit(request.query_params.get("limit"), default=20),
        )
        return Response(
            {"object": "list", "data": [current_event_json(e) for e in page], "has_more": has_more}
        )


class JobCheckpointsApi(APIView):
    def get(self, request: AuthedApiRequest, job_id: str) -> Response:
        job = job_or_404(request, job_id)
        page, has_more = cursor_page(
            job.checkpoints.order_by("-step_number"),
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
