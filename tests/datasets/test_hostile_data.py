"""Hostile training data: deep nesting, lone surrogates, NUL bytes (issue #11, "No 500s").

Every line is reported with its number by the validation worker, and the dataset page, the CSV
export, "Apply fixes" and the browser upload all answer without a 500.
"""

from __future__ import annotations

import io
import json
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from datasets import services, validation
from datasets.models import File
from tests.conftest import Persona, streamed
from tests.datasets.conftest import validate
from tests.datasets.test_views import prepared_csv

GOOD = [json.dumps({"prompt": f"Q{i} ->", "completion": f" A{i}\n"}) for i in range(4)]
DEEP = "[" * 100_000
SURROGATE = '{"prompt": "x \\ud800 ->", "completion": " y\\n"}'
# Tool calls nested past the bound orjson allows: json.dumps would recurse on them.
DEEP_CALLS = json.dumps(
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}
).replace("null", 'null, "tool_calls": ' + "[" * 900 + "]" * 900)
HOSTILE = "\n".join([GOOD[0], DEEP, SURROGATE, *GOOD[1:]]).encode() + b"\n"


def stored(owner: Persona, data: bytes, name: str = "hostile.jsonl") -> File:
    with mock.patch("datasets.tasks.validate_file.delay"):
        return services.file_upload(
            organization=owner.org,
            uploaded_by=owner.user,
            filename=name,
            purpose="fine-tune",
            content=data,
        )


def test_the_validation_worker_reports_each_hostile_line(owner: Persona) -> None:
    file = validate(stored(owner, HOSTILE))

    assert file.status == File.Status.ERROR
    by_line = {e["line"]: e["message"] for e in file.errors}
    assert "nested more than 64 levels" in by_line[2]
    assert "lone UTF-16 surrogate" in by_line[3]
    assert "upload the file again" not in (file.status_details or "")


def test_deep_tool_calls_are_a_line_error_not_a_crash() -> None:
    data = (GOOD[0] + "\n" + DEEP_CALLS + "\n").encode()
    report = validation.analyse_stream(
        io.BytesIO(data).read, counter=None, context_length=512, max_errors=10
    )

    assert [e["line"] for e in report.errors] == [2]


@pytest.fixture
def browser(client: Client, owner: Persona) -> Client:
    client.force_login(owner.user)
    return client


def test_the_pages_of_a_hostile_file_never_500(owner: Persona, browser: Client) -> None:
    file = validate(stored(owner, HOSTILE))

    page = browser.get(file.get_absolute_url())
    export = prepared_csv(browser, file)
    csv_text = streamed(export).decode()
    fixed = browser.post(reverse("datasets:fix", args=[file.public_id]))

    assert page.status_code == 200
    assert "not valid JSON" in page.content.decode() or "line 2" in page.content.decode()
    assert export.status_code == 200
    assert csv_text.count("\r\n") == 1 + len(GOOD)  # the header and every readable row
    assert fixed.status_code == 302


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("deep.jsonl", HOSTILE),
        ("deep.json", DEEP.encode()),
        ("surrogate.json", f"[{SURROGATE}]".encode()),
        ("deep.csv", b"prompt,completion\n" + DEEP.encode() + b",x\n"),
    ],
)
def test_the_browser_upload_never_500s(browser: Client, name: str, data: bytes) -> None:
    response = browser.post(reverse("datasets:upload"), {"file": SimpleUploadedFile(name, data)})

    assert response.status_code in (200, 302, 400)
    if response.status_code == 302:
        assert browser.get(response["Location"]).status_code == 200


def test_leading_nul_bytes_are_binary_not_utf16(owner: Persona) -> None:
    file = validate(stored(owner, b"\0" * 64 + GOOD[0].encode() + b"\n"))

    assert "binary" in file.errors[0]["message"]
    assert "UTF-16" not in file.errors[0]["message"]


def test_utf16_without_a_bom_is_still_called_utf16(owner: Persona) -> None:
    file = validate(stored(owner, (GOOD[0] + "\n").encode("utf-16-le")))

    assert "UTF-16" in file.errors[0]["message"]
