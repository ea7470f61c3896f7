"""/v1/models: list and retrieve (deletion lands with the registry work)."""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from config.api import ApiError
from models_app import selectors
from models_app.serializers import base_model_json, fine_tuned_model_json


def model_not_found(name: str) -> ApiError:
    return ApiError(
        f"The model `{name}` does not exist", status=404, param="model", code="model_not_found"
    )


class ModelListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        org = api_org(request)
        data = [base_model_json(b) for b in selectors.base_model_list()]
        data += [fine_tuned_model_json(m) for m in selectors.model_list_for_org(organization=org)]
        return Response({"object": "list", "data": data, "has_more": False})


class ModelDetailApi(APIView):
    def get(self, request: AuthedApiRequest, model: str) -> Response:
        org = api_org(request)
        fine_tune = selectors.model_find_for_org(organization=org, name=model)
        if fine_tune is not None:
            return Response(fine_tuned_model_json(fine_tune))
        base = selectors.base_model_find(name=model)
        if base is not None:
            return Response(base_model_json(base))
        raise model_not_found(model)
