"""/v1 plumbing: Bearer keys, the OpenAI error envelope on every error, list shapes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from unittest import mock

import pytest
from django.test import Client
from pytest_django import Settings

from accounts import services
from accounts.models import ApiKey, Organization
from tests.conftest import ApiClient, Persona

if TYPE_CHECKING:  # the test client's response type exists only in django-stubs
    from django.test.client import _MonkeyPatchedWSGIResponse


def assert_envelope(
    response: _MonkeyPatchedWSGIResponse, status: int, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_models_list_has_the_openai_shape_and_the_embedded_model(owner: Persona) -> None:
    body = owner.api().get("/v1/models").json()

    assert body["object"] == "list"
    assert body["has_more"] is False
    ids = [m["id"] for m in body["data"]]
    assert "SmolLM2-135M-Instruct" in ids
    assert all(m["object"] == "model" for m in body["data"])


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-tunery-wrong"}, {"Authorization": "Basic abc"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_bad_or_missing_key_is_401_invalid_api_key(db: None, headers: dict[str, str]) -> None:
    response = Client(headers=headers).get("/v1/models")

    assert_envelope(response, 401, "invalid_api_key")


def test_revoked_key_is_401(owner: Persona) -> None:
    key = ApiKey.objects.get(organization=owner.org, created_by=owner.user)
    services.api_key_revoke(actor=owner.user, organization=owner.org, key_id=key.pk)

    assert_envelope(owner.api().get("/v1/models"), 401, "invalid_api_key")


def test_key_use_records_last_used(owner: Persona) -> None:
    owner.api().get("/v1/models")

    assert ApiKey.objects.get(created_by=owner.user).last_used_at is not None


def test_only_the_hash_of_a_key_is_stored(acme: Organization, owner: Persona) -> None:
    created = services.api_key_create(organization=acme, name="x", created_by=owner.user)
    key = ApiKey.objects.get(pk=created.key.pk)

    assert created.secret not in (key.hashed_secret, key.prefix)
    assert created.secret.startswith(key.prefix)


def test_unknown_v1_path_is_a_json_404(owner: Persona) -> None:
    assert_envelope(owner.api().get("/v1/no/such/thing"), 404)


def test_unknown_v1_path_is_json_even_with_debug(owner: Persona, settings: Settings) -> None:
    settings.DEBUG = True
    assert_envelope(owner.api().get("/v1/nope"), 404)


def test_the_028_cli_file_probe_gets_a_json_404(owner: Persona) -> None:
    # `openai api fine_tunes.create -t data/sub/train.jsonl` first probes this URL.
    assert_envelope(owner.api().get("/v1/files/data%2Fsub%2Ftrain.jsonl"), 404)


def test_wrong_method_is_a_json_405(owner: Persona) -> None:
    assert_envelope(owner.api().post("/v1/models"), 405)


def test_unexpected_error_is_a_json_500(owner: Persona) -> None:
    # A fault we can't cause for real: a selector blowing up.
    client = ApiClient(owner.key, raise_request_exception=False)
    with mock.patch("models_app.selectors.base_model_list", side_effect=RuntimeError("boom")):
        error = assert_envelope(client.get("/v1/models"), 500)
    assert error["type"] == "server_error"
    assert "boom" not in error["message"]  # internals never leak


def test_model_retrieve_accepts_aliases_and_404s_unknown(owner: Persona) -> None:
    client = owner.api()
    assert client.get("/v1/models/ada").json()["id"] == "SmolLM2-135M-Instruct"
    error = assert_envelope(client.get("/v1/models/ada%3Aft-acme-2023-01-01-00-00-00"), 404)
    assert error["code"] == "model_not_found"
