"""/v1/models (list, retrieve, owners-only delete) and the checkpoint permissions that share a
fine-tuned model or checkpoint with another organization."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from accounts.selectors import role_for_key
from common.errors import ServiceError
from common.pagination import parse_limit
from models_app import selectors, services
from models_app.serializers import base_model_json, fine_tuned_model_json


class ModelListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        org = api_org(request)
        data = [base_model_json(b) for b in selectors.base_model_list()]
        data += [fine_tuned_model_json(m) for m in selectors.model_list_for_org(organization=org)]
        data += [
            fine_tuned_model_json(grant.fine_tuned_model)
            for grant in selectors.models_shared_with(organization=org)
            if grant.fine_tuned_model is not None  # always: the selector asks for them
        ]
        return Response({"object": "list", "data": data, "has_more": False})


class ModelDetailApi(APIView):
    """`model` arrives decoded: 0.28 sends ':' as %3A, 1.x sends it raw; both match here."""

    def get(self, request: AuthedApiRequest, model: str) -> Response:
        org = api_org(request)
        usable = selectors.usable_model_find(organization=org, name=model)
        if usable is not None and usable.fine_tuned is not None:
            return Response(fine_tuned_model_json(usable.fine_tuned))
        if usable is not None and usable.checkpoint is not None:
            return Response(services.checkpoint_model_json(usable.checkpoint))
        base = selectors.base_model_find(name=model)
        if base is not None:
            return Response(base_model_json(base))
        raise services.ModelNotFound(model)

    def delete(self, request: AuthedApiRequest, model: str) -> Response:
        org = api_org(request)
        target = selectors.model_find_for_org(organization=org, name=model) or (
            selectors.base_model_find(name=model)
        )
        if target is None:
            usable = selectors.usable_model_find(organization=org, name=model)
            if usable is not None and usable.shared_with(org):
                raise PermissionDenied(
                    "This model is shared with your organization; only its owner may delete it."
                )
            raise services.ModelNotFound(model)  # another org's fine-tune looks just like this
        role = role_for_key(key=request.auth)
        return Response(services.model_delete(model=target, by_role=role))


# --- /v1/fine_tuning/checkpoints/{fine_tuned_model_checkpoint}/permissions ------------------


def _body(request: AuthedApiRequest) -> dict[str, Any]:
    data = request.data
    if not isinstance(data, dict):
        raise ServiceError("The request body must be a JSON object.")
    return dict(data.items())


def _page(permissions: list[Any], has_more: bool) -> dict[str, Any]:
    data = [services.permission_json(p) for p in permissions]
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


class CheckpointPermissionListApi(APIView):
    def post(self, request: AuthedApiRequest, checkpoint: str) -> Response:
        granted = services.permission_create(
            organization=api_org(request),
            by_role=role_for_key(key=request.auth),
            name=checkpoint,
            project_ids=_body(request).get("project_ids"),
        )
        return Response(_page(granted, False))

    def get(self, request: AuthedApiRequest, checkpoint: str) -> Response:
        query = request.query_params
        page, has_more = services.permission_list(
            organization=api_org(request),
            by_role=role_for_key(key=request.auth),
            name=checkpoint,
            after=query.get("after"),
            limit=parse_limit(query.get("limit"), default=10),
            order=query.get("order"),
            project_id=query.get("project_id"),
        )
        return Response(_page(page, has_more))


class CheckpointPermissionDetailApi(APIView):
    def delete(self, request: AuthedApiRequest, checkpoint: str, permission_id: str) -> Response:
        return Response(
            services.permission_delete(
                organization=api_org(request),
                by_role=role_for_key(key=request.auth),
                name=checkpoint,
                permission_id=permission_id,
            )
        )
