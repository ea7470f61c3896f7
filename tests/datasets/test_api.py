"""/v1/files through Django's test client: shapes, pagination, limits, errors, org scoping."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.test import Client

from datasets import services
from datasets.models import File
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona, streamed
from tests.datasets.conftest import blobs_of, jsonl, multipart, upload, validate

GOOD = jsonl([{"prompt": f"Q{i} ->", "completion": " A"} for i in range(12)])
FILE_KEYS = {"id", "object", "bytes", "created_at", "filename", "purpose", "status"}
FILE_KEYS |= {"status_details"}


def make_files(persona: Persona, n: int, purpose: str = "fine-tune") -> list[File]:
    files: list[File] = []
    with mock.patch("datasets.tasks.validate_file.delay"):
        for i in range(n):
            files.append(
                services.file_create(
                    organization=persona.org,
                    uploaded_by=persona.user,
                    filename=f"f{i}.jsonl" if purpose == "fine-tune" else "compiled_results.csv",
                    purpose=purpose,
                    content=GOOD if purpose == "fine-tune" else b"step\n1\n",
                )
            )
    return files


# --- create ------------------------------------------------------------------------------------


def test_upload_returns_the_openai_file_object(owner: Persona) -> None:
    response = upload(owner.api(), GOOD, filename="data/sub/train.jsonl")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == FILE_KEYS
    assert body["id"].startswith("file-")
    assert len(body["id"]) == 29
    assert body["object"] == "file"
    assert body["bytes"] == len(GOOD)
    assert isinstance(body["created_at"], int)
    assert (body["filename"], body["purpose"], body["status"]) == (
        "train.jsonl",
        "fine-tune",
        "uploaded",
    )
    assert body["status_details"] is None


def test_upload_then_validation_makes_the_file_processed(owner: Persona) -> None:
    client = owner.api()
    file_id = upload(client, GOOD).json()["id"]

    validate(File.objects.get(public_id=file_id))

    body = client.get(f"/v1/files/{file_id}").json()
    assert body["status"] == "processed"
    assert body["status_details"].startswith("12 examples")


def test_a_member_can_upload_too(member: Persona) -> None:
    assert upload(member.api(), GOOD).status_code == 200


@pytest.mark.parametrize(
    ("fields", "files", "param"),
    [
        ({"purpose": "fine-tune"}, {}, "file"),
        ({}, {"file": ("t.jsonl", GOOD)}, "purpose"),
        ({"purpose": "fine-tune", "file": "not a file"}, {}, "file"),
        ({"purpose": "assistants"}, {"file": ("t.jsonl", GOOD)}, "purpose"),
        ({"purpose": "fine-tune"}, {"file": ("..", GOOD)}, "file"),
    ],
    ids=["no-file", "no-purpose", "file-as-text", "wrong-purpose", "dotdot-name"],
)
def test_bad_uploads_are_400_naming_the_param(
    owner: Persona, media_dir: Path, fields: dict[str, str], files: Any, param: str
) -> None:
    body, content_type = multipart(fields, files)

    error = assert_envelope(owner.api().post("/v1/files", body, content_type=content_type), 400)

    assert error["param"] == param
    assert not File.objects.exists()
    assert blobs_of(owner.org.pk, media_dir) == []


def test_a_json_body_is_400_file(owner: Persona) -> None:
    response = owner.api().post(
        "/v1/files", {"purpose": "fine-tune"}, content_type="application/json"
    )

    assert assert_envelope(response, 400)["param"] == "file"


def test_upload_needs_a_key(db: None) -> None:
    response = upload(Client(), GOOD)

    assert_envelope(response, 401, "invalid_api_key")


# --- size limits -------------------------------------------------------------------------------


def test_an_oversize_body_is_refused_from_its_content_length(
    owner: Persona, settings: Any, media_dir: Path
) -> None:
    settings.MAX_UPLOAD_BYTES = 1000
    big = b"x" * 70_000  # past MAX_UPLOAD_BYTES plus the multipart allowance

    with mock.patch("datasets.api.FileListCreateApi.InputSerializer") as parse:
        error = assert_envelope(upload(owner.api(), big), 413, "file_too_large")

    parse.assert_not_called()  # the body was never parsed
    assert error["param"] == "file"
    assert "maximum upload size is 1,000 bytes" in error["message"]
    assert not File.objects.exists()


def test_an_oversize_file_is_stopped_while_streaming(owner: Persona, settings: Any) -> None:
    # Within the Content-Length allowance, so the upload handler is what says no.
    settings.MAX_UPLOAD_BYTES = 1000

    error = assert_envelope(upload(owner.api(), b"x" * 5000), 413, "file_too_large")

    assert error["param"] == "file"
    assert not File.objects.exists()


def test_a_huge_non_file_field_is_413_not_an_html_400(owner: Persona, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    body, content_type = multipart({"purpose": "fine-tune", "file": "x" * 5000}, {})

    response = owner.api().post("/v1/files", body, content_type=content_type)

    assert_envelope(response, 413, "file_too_large")


def test_too_many_files_is_a_json_400(owner: Persona, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = {f"file{i}": (f"{i}.jsonl", GOOD) for i in range(3)}
    body, content_type = multipart({"purpose": "fine-tune"}, files)

    response = owner.api().post("/v1/files", body, content_type=content_type)

    assert assert_envelope(response, 400)["param"] == "file"


# --- list --------------------------------------------------------------------------------------


def test_list_is_newest_first_with_cursor_fields(owner: Persona) -> None:
    files = make_files(owner, 3)

    body = owner.api().get("/v1/files").json()

    assert body["object"] == "list"
    assert [f["id"] for f in body["data"]] == [f.public_id for f in reversed(files)]
    assert body["first_id"] == files[-1].public_id
    assert body["last_id"] == files[0].public_id
    assert body["has_more"] is False
    assert all(set(f) == FILE_KEYS for f in body["data"])


def test_list_pages_with_limit_and_after(owner: Persona) -> None:
    files = [f.public_id for f in make_files(owner, 5)]
    client = owner.api()

    page: dict[str, str | int] = {"limit": 2, "order": "asc"}
    first = client.get("/v1/files", page).json()
    second = client.get("/v1/files", {**page, "after": first["last_id"]})
    last = client.get("/v1/files", {**page, "after": files[3]}).json()

    assert [f["id"] for f in first["data"]] == files[:2]
    assert first["has_more"] is True
    assert [f["id"] for f in second.json()["data"]] == files[2:4]
    assert [f["id"] for f in last["data"]] == files[4:]
    assert last["has_more"] is False


def test_list_filters_by_purpose(owner: Persona) -> None:
    make_files(owner, 2)
    results = make_files(owner, 1, purpose="fine-tune-results")

    body = owner.api().get("/v1/files", {"purpose": "fine-tune-results"}).json()

    assert [f["id"] for f in body["data"]] == [results[0].public_id]


def test_list_is_empty_with_null_cursors(owner: Persona) -> None:
    body = owner.api().get("/v1/files").json()

    assert body == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


@pytest.mark.parametrize(
    ("query", "param"),
    [({"order": "up"}, "order"), ({"limit": "0"}, "limit"), ({"limit": "x"}, "limit")],
)
def test_list_rejects_bad_parameters(owner: Persona, query: dict[str, str], param: str) -> None:
    assert assert_envelope(owner.api().get("/v1/files", query), 400)["param"] == param


def test_list_after_an_unknown_id_is_400(owner: Persona) -> None:
    make_files(owner, 1)

    error = assert_envelope(owner.api().get("/v1/files", {"after": "file-nope"}), 400)

    assert error["param"] == "after"


def test_list_shows_only_the_orgs_files(owner: Persona, outsider: Persona) -> None:
    make_files(owner, 2)

    assert outsider.api().get("/v1/files").json()["data"] == []


# --- retrieve, content, delete -----------------------------------------------------------------


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("get", "/content"), ("delete", "")])
def test_another_orgs_file_is_404_like_an_unknown_one(
    owner: Persona, outsider: Persona, method: str, suffix: str
) -> None:
    (file,) = make_files(owner, 1)
    client = outsider.api()

    theirs = assert_envelope(getattr(client, method)(f"/v1/files/{file.public_id}{suffix}"), 404)
    unknown = assert_envelope(getattr(client, method)(f"/v1/files/file-nope{suffix}"), 404)

    assert theirs == {
        "message": f"No such File object: {file.public_id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }
    assert unknown["message"] == "No such File object: file-nope"
    assert File.objects.filter(pk=file.pk).exists()


def test_the_028_cli_probe_for_a_local_path_is_a_json_404(owner: Persona) -> None:
    error = assert_envelope(owner.api().get("/v1/files/data%2Fsub%2Ftrain.jsonl"), 404)

    assert error["message"] == "No such File object: data/sub/train.jsonl"
    assert error["param"] == "id"


def test_content_returns_the_raw_bytes(owner: Persona) -> None:
    (file,) = make_files(owner, 1)

    response = owner.api().get(f"/v1/files/{file.public_id}/content")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert streamed(response) == GOOD


def test_content_serves_the_sdks_accept_header(owner: Persona) -> None:
    # The current SDK asks for `Accept: application/binary`; DRF would answer 406.
    (file,) = make_files(owner, 1)
    client = owner.api()

    found = client.get(f"/v1/files/{file.public_id}/content", HTTP_ACCEPT="application/binary")
    missing = client.get("/v1/files/file-nope/content", HTTP_ACCEPT="application/binary")

    assert found.status_code == 200
    assert_envelope(missing, 404)


def test_results_content_is_csv_text(owner: Persona) -> None:
    (file,) = make_files(owner, 1, purpose="fine-tune-results")

    response = owner.api().get(f"/v1/files/{file.public_id}/content")

    assert response["Content-Type"].startswith("text/csv")
    assert streamed(response) == b"step\n1\n"


def test_content_of_a_lost_blob_is_a_json_404(owner: Persona) -> None:
    (file,) = make_files(owner, 1)
    assert file.blob.name  # stored: it has a name
    file.blob.storage.delete(file.blob.name)

    error = assert_envelope(owner.api().get(f"/v1/files/{file.public_id}/content"), 404)

    assert "no longer available" in error["message"]


def test_delete_answers_openais_shape_and_the_file_is_gone(
    owner: Persona, media_dir: Path, django_capture_on_commit_callbacks: Any
) -> None:
    (file,) = make_files(owner, 1)
    client = owner.api()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"/v1/files/{file.public_id}")

    assert response.json() == {"id": file.public_id, "object": "file", "deleted": True}
    assert_envelope(client.get(f"/v1/files/{file.public_id}"), 404)
    assert blobs_of(owner.org.pk, media_dir) == []


def test_delete_with_the_current_sdks_empty_json_body_works(owner: Persona) -> None:
    # 1.x sends Content-Type: application/json with no body on DELETE.
    (file,) = make_files(owner, 1)

    response = owner.api().delete(f"/v1/files/{file.public_id}", content_type="application/json")

    assert response.status_code == 200


# --- deleting a file that fine-tune jobs use ---------------------------------------------------


def make_job(file: File, status: str, *, api: str = "current") -> Any:
    from jobs.models import FineTuneJob
    from models_app.models import BaseModel

    prefix = "ftjob-" if api == "current" else "ft-"
    return FineTuneJob.objects.create(
        public_id=f"{prefix}{status}{file.pk}",
        api=api,
        organization=file.organization,
        model="SmolLM2-135M-Instruct",
        base_model=BaseModel.objects.get(name="SmolLM2-135M-Instruct"),
        training_file=file,
        seed=1,
        status=status,
    )


@pytest.mark.parametrize("status", ["queued", "running"])
def test_delete_is_refused_while_an_unfinished_job_uses_the_file(
    owner: Persona, status: str
) -> None:
    (file,) = make_files(owner, 1)
    job = make_job(file, status)
    client = owner.api()

    error = assert_envelope(client.delete(f"/v1/files/{file.public_id}"), 400)

    assert error["param"] == "id"
    assert error["type"] == "invalid_request_error"
    assert f"in use by fine-tune job {job.public_id}, which has not finished" in error["message"]
    assert client.get(f"/v1/files/{file.public_id}").status_code == 200


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_a_file_finished_jobs_used_can_be_deleted_and_the_jobs_keep_its_id(
    owner: Persona, media_dir: Path, django_capture_on_commit_callbacks: Any, status: str
) -> None:
    (file,) = make_files(owner, 1)
    current = make_job(file, status)
    legacy = make_job(file, status, api="legacy")
    client = owner.api()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"/v1/files/{file.public_id}")

    assert response.json() == {"id": file.public_id, "object": "file", "deleted": True}
    for path in ("", "/content"):
        assert_envelope(client.get(f"/v1/files/{file.public_id}{path}"), 404)
    assert_envelope(client.delete(f"/v1/files/{file.public_id}"), 404)
    assert client.get("/v1/files").json()["data"] == []
    assert blobs_of(owner.org.pk, media_dir) == []
    job = client.get(f"/v1/fine_tuning/jobs/{current.public_id}").json()
    assert job["training_file"] == file.public_id
    fine_tune = client.get(f"/v1/fine-tunes/{legacy.public_id}").json()
    assert fine_tune["training_files"][0]["id"] == file.public_id
    assert fine_tune["training_files"][0]["status"] == "deleted"


def test_a_deleted_file_cant_start_a_new_job(owner: Persona) -> None:
    (file,) = make_files(owner, 1)
    File.objects.filter(pk=file.pk).update(status=File.Status.PROCESSED)
    make_job(file, "succeeded")
    client = owner.api()
    client.delete(f"/v1/files/{file.public_id}")

    response = client.post(
        "/v1/fine_tuning/jobs",
        {"model": "SmolLM2-135M-Instruct", "training_file": file.public_id},
        content_type="application/json",
    )

    error = assert_envelope(response, response.status_code)
    assert response.status_code in (400, 404)
    assert error["param"] == "training_file"
