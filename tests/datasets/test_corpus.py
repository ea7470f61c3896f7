"""The bad-input corpus: every file gets a clear answer naming its line or param, no 500, and
nothing half-written. Files live in tests/datasets/corpus/ (see make_corpus.py); the big and
hostile cases are built here at run time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from datasets.models import File
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.datasets.conftest import CORPUS, blobs_of, jsonl, upload, validate

EXPECTED: dict[str, dict[str, Any]] = {
    name: spec
    for name, spec in json.loads((CORPUS / "expected.json").read_text()).items()
    if not name.startswith("_")
}
GOOD_ROWS = [{"prompt": f"Q{i} ->", "completion": " A"} for i in range(5)]


def test_the_corpus_has_at_least_25_files_and_each_has_an_expectation() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name not in ("expected.json", "make_corpus.py")}

    assert len(files) >= 25
    assert files == set(EXPECTED)


def assert_rejected(response: Any, spec: dict[str, Any], persona: Persona, media: Path) -> None:
    error = assert_envelope(response, spec["status"])
    assert error["param"] == spec["param"]
    assert spec["message"] in error["message"]
    # Nothing half-written: no row, no blob.
    assert not File.objects.exists()
    assert blobs_of(persona.org.pk, media) == []


def assert_error_status(response: Any, spec: dict[str, Any], persona: Persona) -> File:
    assert response.status_code == 200, response.content
    file = validate(File.objects.get(public_id=response.json()["id"]))
    assert file.status == File.Status.ERROR
    assert not file.is_usable_for_training
    first = file.errors[0]
    assert first["line"] == spec["line"], file.errors
    assert spec["message"] in first["message"], file.errors
    if "param" in spec:
        assert first["param"] == spec["param"]
    # The client sees the same story through the API.
    body = persona.api().get(f"/v1/files/{file.public_id}").json()
    assert body["status"] == "error"
    assert f"line {spec['line']}: " in body["status_details"]
    return file


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_file_gets_a_clear_answer(owner: Persona, media_dir: Path, name: str) -> None:
    spec = EXPECTED[name]

    response = upload(owner.api(), (CORPUS / name).read_bytes(), filename=name)

    if spec["outcome"] == "rejected":
        assert_rejected(response, spec, owner, media_dir)
    else:
        assert_error_status(response, spec, owner)


def test_a_50_mb_line_is_reported_by_line_number(owner: Persona) -> None:
    huge = b'{"prompt": "' + b"a" * (50 * 2**20) + b'", "completion": " x"}\n'
    data = jsonl(GOOD_ROWS[:2]) + huge + jsonl(GOOD_ROWS)

    response = upload(owner.api(), data)

    file = assert_error_status(response, {"line": 3, "message": "is longer than"}, owner)
    assert file.error_count == 1
    assert file.stats["examples"] == 7


def test_an_oversize_upload_is_413_and_leaves_nothing(
    owner: Persona, media_dir: Path, settings: Any
) -> None:
    settings.MAX_UPLOAD_BYTES = 100

    response = upload(owner.api(), jsonl(GOOD_ROWS * 5))

    spec = {"status": 413, "param": "file", "message": "maximum upload size is 100 bytes"}
    assert_rejected(response, spec, owner, media_dir)


@pytest.mark.parametrize(
    ("filename", "shown"),
    [
        ("../../../etc/passwd.jsonl", "passwd.jsonl"),
        ("..\\..\\windows\\train.jsonl", "train.jsonl"),
        ("train\x00.jsonl", "train.jsonl"),
        ("/absolute/path/train.jsonl", "train.jsonl"),
    ],
)
def test_hostile_filenames_never_become_paths(
    owner: Persona, media_dir: Path, filename: str, shown: str
) -> None:
    response = upload(owner.api(), jsonl(GOOD_ROWS), filename=filename)

    assert response.status_code == 200, response.content
    file = File.objects.get(public_id=response.json()["id"])
    assert file.filename == shown == response.json()["filename"]
    assert blobs_of(owner.org.pk, media_dir) == [
        media_dir / "files" / str(owner.org.pk) / file.public_id
    ]
    assert not (media_dir.parent / "etc").exists()


@pytest.mark.parametrize("purpose", ["fine_tune", "assistants", "results", "FINE-TUNE"])
def test_a_wrong_purpose_is_400_purpose(owner: Persona, media_dir: Path, purpose: str) -> None:
    response = upload(owner.api(), jsonl(GOOD_ROWS), purpose=purpose)

    spec = {"status": 400, "param": "purpose", "message": "is not a supported purpose"}
    assert_rejected(response, spec, owner, media_dir)
