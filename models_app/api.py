"""/v1/models: list, retrieve and (owners only) delete."""

from __future__ import annotations

from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from accounts.selectors import role_for_key
from models_app import selectors, services
from models_app.serializers import base_model_json, fine_tuned_model_json


class ModelListApi(APIView):
    def get(self, request: AuthedApiRequest) -> Response:
        org = api_org(request)
        data = [base_model_json(b) for b in selectors.base_model_list()]
        data += [fine_tuned_model_json(m) for m in selectors.model_list_for_org(organization=org)]
        return Response({"object": "list", "data": data, "has_more": False})


class ModelDetailApi(APIView):
    """`model` arrives decoded: 0.28 sends ':' as %3A, 1.x sends it raw; both match here."""

    def get(self, request: AuthedApiRequest, model: str) -> Response:
        org = api_org(request)
        fine_tune = selectors.model_find_for_org(organization=org, name=model)
        if fine_tune is not None:
            return Response(fine_tuned_model_json(fine_tune))
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
            raise services.ModelNotFound(model)  # another org's fine-tune looks just like this
        role = role_for_key(key=request.auth)
        return Response(services.model_delete(model=target, by_role=role))
