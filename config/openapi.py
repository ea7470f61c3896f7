"""GET /v1/openapi.json: the hand-written OpenAPI 3.1 description of /v1 (config/openapi.yaml).

Public, like OpenAI's published spec: it describes the API, not anyone's data.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

SCHEMA_PATH = Path(__file__).with_name("openapi.yaml")


@cache
def openapi_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open(encoding="utf-8") as fh:
        schema: dict[str, Any] = yaml.safe_load(fh)
        return schema


class OpenApiSchemaApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def get(self, request: Request) -> Response:
        return Response(openapi_schema())
