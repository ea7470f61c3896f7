"""The upload size limit holds while the body streams, on the upload page and the Files API:
the temporary file never grows past the limit (issue #11)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from django.test import Client
from django.urls import reverse

from datasets.models import File
from tests.conftest import Persona
from tests.datasets.conftest import upload

LIMIT = 256 * 1024
WRITTEN: list[int] = []  # the temporary file's size after each chunk, this test's


class RecordingTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Django's disk handler, noting how large the temporary file has grown."""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        super().receive_data_chunk(raw_data, start)
        assert self.file.size is not None  # a temporary file on disk always has one
        WRITTEN.append(self.file.size)


@pytest.fixture
def small_limit(settings: Any) -> None:
    WRITTEN.clear()
    settings.MAX_UPLOAD_BYTES = LIMIT
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 0  # straight to a temporary file on disk
    settings.FILE_UPLOAD_HANDLERS = [
        f"{__name__}.RecordingTemporaryFileUploadHandler",
    ]


def _rows(size: int) -> bytes:
    line = json.dumps({"prompt": "p" * 100, "completion": " c"}).encode() + b"\n"
    return line * (size // len(line) + 1)


@pytest.fixture
def browser(client: Client, owner: Persona) -> Client:
    client.force_login(owner.user)
    return client


def test_the_upload_page_stops_a_body_at_the_limit_while_streaming(
    browser: Client, small_limit: None
) -> None:
    # Within the Content-Length allowance (multipart framing), so only streaming can stop it.
    data = _rows(LIMIT + 32 * 1024)

    response = browser.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("t.jsonl", data)}
    )

    assert response.status_code == 413
    assert "maximum upload size" in response.content.decode()
    assert WRITTEN, "the body was streamed to a temporary file"
    assert max(WRITTEN) <= LIMIT
    assert not File.objects.exists()


def test_the_upload_page_refuses_a_huge_body_from_its_content_length(
    browser: Client, small_limit: None
) -> None:
    response = browser.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("t.jsonl", _rows(4 * LIMIT))}
    )

    assert response.status_code == 413
    assert WRITTEN == []  # not one byte written


def test_the_upload_page_still_needs_its_csrf_token(owner: Persona) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner.user)

    response = client.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("t.jsonl", _rows(100))}
    )

    assert response.status_code == 403
    assert not File.objects.exists()


def test_the_files_api_stops_a_body_at_the_limit_while_streaming(
    owner: Persona, small_limit: None
) -> None:
    response = upload(owner.api(), _rows(LIMIT + 32 * 1024))

    assert response.status_code == 413
    assert WRITTEN and max(WRITTEN) <= LIMIT


def test_an_upload_within_the_limit_is_stored(browser: Client, small_limit: None) -> None:
    response = browser.post(
        reverse("datasets:upload"), {"file": SimpleUploadedFile("t.jsonl", _rows(LIMIT // 2))}
    )

    assert response.status_code == 302
    assert File.objects.count() == 1
