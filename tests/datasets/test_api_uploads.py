"""Upload edge cases of POST /v1/files (issue #11): each gets a clear 400 naming its param."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from datasets.models import File
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.datasets.conftest import blobs_of, jsonl

GOOD = jsonl([{"prompt": f"Q{i} ->", "completion": " A"} for i in range(3)])


def parts(*items: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    """A multipart body from (name, filename or None, data), repeats allowed."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, filename, data in items:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize(
    ("items", "param"),
    [
        (
            [("purpose", None, b"fine-tune"), ("file", "a.jsonl", GOOD), ("file", "b.jsonl", GOOD)],
            "file",
        ),
        (
            [
                ("purpose", None, b"fine-tune"),
                ("purpose", None, b"fine-tune"),
                ("file", "a.jsonl", GOOD),
            ],
            "purpose",
        ),
        ([("purpose", None, b"fine-tune-results"), ("file", "r.csv", b"step\n1\n")], "purpose"),
        ([("purpose", None, b"fine-tune-results"), ("file", "x.png", b"\x89PNG\r\n")], "purpose"),
        ([("purpose", None, b"batch"), ("file", "a.jsonl", GOOD)], "purpose"),
    ],
    ids=["two-files", "two-purposes", "results-csv", "results-png", "batch"],
)
def test_ambiguous_or_forbidden_uploads_are_400_naming_the_param(
    owner: Persona, media_dir: Path, items: list[tuple[str, str | None, bytes]], param: str
) -> None:
    body, content_type = parts(*items)

    error = assert_envelope(owner.api().post("/v1/files", body, content_type=content_type), 400)

    assert error["param"] == param
    assert not File.objects.exists()
    assert blobs_of(owner.org.pk, media_dir) == []


def test_uploading_results_says_who_writes_them(owner: Persona) -> None:
    body, content_type = parts(("purpose", None, b"fine-tune-results"), ("file", "r.csv", b"s\n"))

    error = assert_envelope(owner.api().post("/v1/files", body, content_type=content_type), 400)

    assert "Tunery writes those files itself" in error["message"]
    assert "'fine-tune'" in error["message"]
