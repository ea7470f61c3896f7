"""The OpenAPI document covers every /v1 route and method, and the app serves it (issue #11).

An engineer adding a /v1 endpoint must describe it in config/openapi.yaml, or this fails.
"""

from __future__ import annotations

import re
from typing import Any

from django.test import Client
from django.urls import URLPattern, URLResolver

from config import api_urls
from config.openapi import openapi_schema

METHODS = ("get", "post", "put", "patch", "delete")


def _routes(patterns: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern):
            found.append((prefix + str(pattern.pattern), pattern.callback))
    return found


def _openapi_path(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def v1_operations() -> set[tuple[str, str]]:
    operations = set()
    for route, callback in _routes(api_urls.urlpatterns):
        if route.startswith("^"):  # the catch-all JSON 404 for unknown paths
            continue
        view = getattr(callback, "view_class", None)
        assert view is not None, f"/v1/{route} is not a class-based API view"
        for method in METHODS:
            if hasattr(view, method):
                operations.add((_openapi_path(route), method))
    return operations


def test_every_v1_route_and_method_is_in_the_schema() -> None:
    schema = openapi_schema()
    described = {
        (path, method)
        for path, item in schema["paths"].items()
        for method in item
        if method in METHODS
    }

    missing = v1_operations() - described
    stale = described - v1_operations()

    assert not missing, f"add these to config/openapi.yaml: {sorted(missing)}"
    assert not stale, f"config/openapi.yaml describes routes that don't exist: {sorted(stale)}"
    assert len(described) >= 20


def test_every_operation_documents_its_errors() -> None:
    for path, item in openapi_schema()["paths"].items():
        for method, operation in item.items():
            if method not in METHODS or path == "/openapi.json":
                continue
            assert "401" in operation["responses"], (path, method)
            if "{" in path or method == "post":
                assert {"400", "404"} & set(operation["responses"]), (path, method)


def test_the_schema_is_served_without_a_key(db: None) -> None:
    response = Client().get("/v1/openapi.json")

    assert response.status_code == 200
    assert response.json() == openapi_schema()
    assert response.json()["openapi"].startswith("3.1")
