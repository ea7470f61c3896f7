"""Hostile JSON bodies on every /v1 POST: a 4xx in OpenAI's envelope, never a 500 (issue #11).

The POST routes are read from the URL configuration, so a new endpoint is covered the day it
is added.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.urls import URLPattern, URLResolver

from config import api_urls
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona


def _routes(patterns: list[Any], prefix: str = "/v1/") -> list[tuple[str, Any]]:
    found = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, prefix + str(pattern.pattern))
        elif isinstance(pattern, URLPattern) and hasattr(pattern.callback, "view_class"):
            found.append((prefix + str(pattern.pattern), pattern.callback.view_class))
    return found


def _concrete(route: str) -> str:
    # Any value will do for path parameters: an unknown id must be a JSON 404, not a 500.
    for name in ("file_id", "job_id", "model", "engine"):
        route = route.replace(f"<path:{name}>", "nope").replace(f"<str:{name}>", "nope")
    return route


POST_ROUTES = sorted(
    _concrete(r) for r, view in _routes(api_urls.urlpatterns) if hasattr(view, "post")
)
# The endpoints that read a JSON body (the others, cancel and upload, ignore or refuse it).
JSON_ROUTES = [
    "/v1/fine-tunes",
    "/v1/fine_tuning/jobs",
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/engines/nope/completions",
]


def test_every_json_route_is_a_post_route() -> None:
    assert set(JSON_ROUTES) <= set(POST_ROUTES)
    assert len(POST_ROUTES) >= 8


def post_raw(persona: Persona, path: str, body: bytes, **extra: Any) -> Any:
    return persona.api().post(path, body, content_type="application/json", **extra)


@pytest.mark.parametrize("path", POST_ROUTES)
def test_deeply_nested_json_is_never_a_500(owner: Persona, path: str) -> None:
    response = post_raw(owner, path, b"[" * 100_000)

    assert response.status_code < 500
    assert_envelope(response, response.status_code)
    if path in JSON_ROUTES:
        assert "nested" in assert_envelope(response, 400)["message"]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "a\\ud800"}',
        b'{"model": "x", "prompt": "\\udfff", "messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"model": "x", "suffix": "ok", "metadata": {"\\ud800": "k"}}',
    ],
    ids=["model", "deeper", "in-a-key"],
)
def test_lone_surrogates_are_a_400_naming_where(owner: Persona, path: str, body: bytes) -> None:
    error = assert_envelope(post_raw(owner, path, body), 400)

    assert "surrogate" in error["message"]
    assert error["param"] in ("model", "prompt", "metadata.\\ud800")


def test_moderately_deep_json_is_refused_before_anything_recurses(owner: Persona) -> None:
    body = {"model": "x", "prompt": "hi", "logit_bias": json.loads("[" * 70 + "]" * 70)}

    error = assert_envelope(post_raw(owner, "/v1/completions", json.dumps(body).encode()), 400)

    assert "nested more than 64 levels" in error["message"]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_body_over_the_limit_is_413_in_the_envelope(
    owner: Persona, path: str, settings: Any
) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body = json.dumps({"model": "x", "prompt": "y" * 5000}).encode()

    error = assert_envelope(post_raw(owner, path, body), 413, "request_too_large")

    assert "1,000 bytes" in error["message"]


def test_the_default_limit_is_10_mib(owner: Persona) -> None:
    body = json.dumps({"model": "x", "prompt": "y" * (10 * 2**20)}).encode()

    assert_envelope(post_raw(owner, "/v1/completions", body), 413, "request_too_large")


@pytest.mark.parametrize("path", ["/v1/fine_tuning/jobs", "/v1/files"])
def test_a_chunked_body_is_a_clear_400_not_an_empty_one(owner: Persona, path: str) -> None:
    # Django reads CONTENT_LENGTH bytes; a chunked body has none and would arrive empty.
    response = owner.api().post(
        path,
        b'{"model": "x"}',
        content_type="multipart/form-data; boundary=x" if "files" in path else "application/json",
        HTTP_TRANSFER_ENCODING="chunked",
        CONTENT_LENGTH="",
    )

    error = assert_envelope(response, 400, "length_required")
    assert "Content-Length" in error["message"]
    assert error["param"] == ("file" if "files" in path else None)


@pytest.mark.parametrize(
    "body", [b"[NaN]", b'{"model": 1e999999}', b"\xff\xfe{}", b'{"a": 1', b"nul\x00"]
)
def test_invalid_json_is_a_400_not_a_500(owner: Persona, body: bytes) -> None:
    assert_envelope(post_raw(owner, "/v1/completions", body), 400)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/files/file-%00", "path"),
        ("/v1/fine_tuning/jobs?after=%00", "after"),
        ("/v1/fine_tuning/jobs?metadata[a]=%00", "metadata[a]"),
        ("/v1/models/%00", "path"),
    ],
)
def test_a_nul_in_the_url_is_a_400_not_a_database_error(
    owner: Persona, path: str, param: str
) -> None:
    # PostgreSQL refuses NUL in any text parameter: a lookup by such an id was a 500.
    assert assert_envelope(owner.api().get(path), 400)["param"] == param


def test_a_nul_on_a_page_url_is_a_400(owner: Persona) -> None:
    from django.test import Client

    client = Client()
    client.force_login(owner.user)

    assert client.get("/datasets/file-%00/").status_code == 400


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_nul_in_a_json_string_is_a_400_naming_it(owner: Persona, path: str) -> None:
    body = b'{"model": "m\\u0000", "messages": [], "training_file": "f"}'

    error = assert_envelope(post_raw(owner, path, body), 400)

    assert error["param"] == "model"


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_a_form_body_is_415_not_a_way_around_the_json_checks(owner: Persona, path: str) -> None:
    response = owner.api().post(
        path, "model=m%00&training_file=f", content_type="application/x-www-form-urlencoded"
    )

    assert_envelope(response, 415)
