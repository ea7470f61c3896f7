"""One mapping of the service layer's refusals (common.errors.ServiceError) per interface.

DRF views get OpenAI's envelope from config.api.exception_handler (the whole /v1 suite pins
that); these cover the rest: a plain Django view under /v1, a browser page, and a form.
"""

from __future__ import annotations

from typing import Any

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import include, path

from common.errors import ServiceError
from common.forms import error_message, form_error
from tests.accounts.test_api_auth import assert_envelope


def _refuse(request: HttpRequest) -> HttpResponse:
    raise ServiceError(
        "The job is paused <b>now</b>.",
        status=409,
        param="job_id",
        code="job_paused",
        headers={"Retry-After": "7"},
    )


urlpatterns = [
    path("v1/plain-refusal", _refuse),
    path("pages/refusal/", _refuse),
    path("", include("config.urls")),  # the base template's links
]


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__)
def test_a_plain_v1_view_answers_the_envelope_with_the_refusals_status_and_headers() -> None:
    response = Client().get("/v1/plain-refusal")
    error = assert_envelope(response, 409, code="job_paused")
    assert error["param"] == "job_id" and "paused" in error["message"]
    assert response["Retry-After"] == "7"


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__)
def test_a_browser_page_answers_the_error_page_with_the_refusals_status_not_a_500() -> None:
    client = Client()
    response = client.get("/pages/refusal/", HTTP_REFERER="http://testserver/jobs/")
    assert response.status_code == 409
    page = response.content.decode()
    assert "The job is paused &lt;b&gt;now&lt;/b&gt;." in page  # escaped, as everywhere
    assert 'href="http://testserver/jobs/"' in page  # back where the user was
    # A link back elsewhere is not offered (an open redirect in an error page).
    other = client.get("/pages/refusal/", HTTP_REFERER="https://evil.example/")
    assert other.status_code == 409 and "evil.example" not in other.content.decode()


class _Form(forms.Form):
    beta = forms.FloatField(required=False)
    method_type = forms.CharField(required=False)


@pytest.mark.parametrize(
    ("exc", "field"),
    [
        (ServiceError("too big", param="method.dpo.hyperparameters.beta"), "beta"),
        (ServiceError("unknown", param="method.type"), "method_type"),
        (ServiceError("no such file", param="training_file"), "__all__"),
        (ServiceError("busy"), "__all__"),
        (ValidationError({"beta": "must be positive"}), "beta"),
        (ValidationError({"other": "elsewhere"}), "__all__"),
        (ValidationError("plain"), "__all__"),
    ],
)
def test_form_error_puts_a_refusal_on_the_field_its_param_names(exc: Any, field: str) -> None:
    form = _Form({})
    assert form.is_valid()
    form_error(form, exc, aliases={"method.type": "method_type"}, words=str.upper)
    assert list(form.errors) == [field]
    assert form.errors[field] == [error_message(exc).upper()]
