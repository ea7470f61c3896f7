"""file_create / file_delete: storage, naming, limits, enqueueing, and nothing half-written."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError

from config.api import ApiError
from datasets import services
from datasets.models import File
from jobs.models import FineTuneJob
from models_app.models import BaseModel
from tests.conftest import Persona
from tests.datasets.conftest import blobs_of, jsonl

GOOD = jsonl([{"prompt": "2+2 ->", "completion": " 4"}] * 3)


def create(persona: Persona, **kwargs: Any) -> File:
    options = {
        "organization": persona.org,
        "uploaded_by": persona.user,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "content": GOOD,
    } | kwargs
    with mock.patch("datasets.tasks.validate_file.delay"):
        return services.file_create(**options)


def make_job(file: File, status: str) -> FineTuneJob:
    return FineTuneJob.objects.create(
        public_id=f"ftjob-{file.pk}{status}",
        api=FineTuneJob.Api.CURRENT,
        organization=file.organization,
        model="SmolLM2-135M-Instruct",
        base_model=BaseModel.objects.get(name="SmolLM2-135M-Instruct"),
        training_file=file,
        seed=1,
        status=status,
    )


def test_file_create_stores_the_blob_under_the_public_id_and_enqueues_after_commit(
    owner: Persona, media_dir: Path, django_capture_on_commit_callbacks: Any
) -> None:
    with (
        mock.patch("datasets.tasks.validate_file.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        file = services.file_create(
            organization=owner.org,
            uploaded_by=owner.user,
            filename="train.jsonl",
            purpose="fine-tune",
            content=SimpleUploadedFile("train.jsonl", GOOD),
        )

    delay.assert_called_once_with(file.pk)
    assert file.public_id.startswith("file-")
    assert len(file.public_id) == 29
    assert file.blob.name == f"files/{owner.org.pk}/{file.public_id}"
    assert (media_dir / file.blob.name).read_bytes() == GOOD
    assert (file.bytes, file.status, file.filename) == (len(GOOD), "uploaded", "train.jsonl")


def test_file_create_does_not_enqueue_before_commit(owner: Persona) -> None:
    # The test transaction never commits, so the worker is never told about the row.
    with mock.patch("datasets.tasks.validate_file.delay") as delay:
        services.file_create(
            organization=owner.org,
            uploaded_by=owner.user,
            filename="t.jsonl",
            purpose="fine-tune",
            content=GOOD,
        )

    delay.assert_not_called()


def test_results_files_are_processed_at_once_and_not_validated(
    owner: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    with (
        mock.patch("datasets.tasks.validate_file.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        file = services.file_create(
            organization=owner.org,
            uploaded_by=None,
            filename="compiled_results.csv",
            purpose="fine-tune-results",
            content=b"step,train_loss\n1,0.5\n",
        )

    delay.assert_not_called()
    assert (file.status, file.format) == ("processed", "results_csv")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd.jsonl", "passwd.jsonl"),
        ("data/sub/train.jsonl", "train.jsonl"),  # what the 0.28 CLI sends
        ("C:\\Users\\me\\train.jsonl", "train.jsonl"),
        ("tra\x00in\x1b.jsonl", "train.jsonl"),
        ("  spaced name.jsonl ", "spaced name.jsonl"),
        ("x" * 300 + ".jsonl", "x" * 249 + ".jsonl"),
    ],
)
def test_filenames_are_reduced_to_a_safe_display_name(
    owner: Persona, media_dir: Path, raw: str, clean: str
) -> None:
    file = create(owner, filename=raw)

    assert file.filename == clean
    assert file.blob.name == f"files/{owner.org.pk}/{file.public_id}"
    assert blobs_of(owner.org.pk, media_dir) == [media_dir / file.blob.name]


@pytest.mark.parametrize("raw", ["", "..", "dir/", "\x00\x01"])
def test_a_filename_with_nothing_left_is_refused(owner: Persona, raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        create(owner, filename=raw)

    assert (caught.value.status_code, caught.value.param) == (400, "file")
    assert not File.objects.exists()


@pytest.mark.parametrize("purpose", ["assistants", "fine_tune", "", "batch"])
def test_unknown_purposes_are_refused(owner: Persona, purpose: str) -> None:
    with pytest.raises(ApiError) as caught:
        create(owner, purpose=purpose)

    assert (caught.value.status_code, caught.value.param) == (400, "purpose")
    assert "'fine-tune'" in caught.value.message


def test_oversize_content_is_413_and_stores_nothing(
    owner: Persona, media_dir: Path, settings: Any
) -> None:
    settings.MAX_UPLOAD_BYTES = 10

    with pytest.raises(ApiError) as caught:
        create(owner)

    assert (caught.value.status_code, caught.value.param) == (413, "file")
    assert "maximum upload size is 10 bytes" in caught.value.message
    assert not File.objects.exists()
    assert blobs_of(owner.org.pk, media_dir) == []


def test_a_failed_insert_leaves_no_blob_behind(owner: Persona, media_dir: Path) -> None:
    with (
        mock.patch.object(File, "save", side_effect=IntegrityError("boom")),
        pytest.raises(IntegrityError),
    ):
        create(owner)

    assert not File.objects.exists()
    assert blobs_of(owner.org.pk, media_dir) == []


def test_a_failed_blob_write_leaves_nothing_behind(owner: Persona, media_dir: Path) -> None:
    storage = File._meta.get_field("blob").storage  # type: ignore[attr-defined]

    def half_write(name: str, content: Any, max_length: int | None = None) -> str:
        (media_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (media_dir / name).write_bytes(b"half")
        raise OSError("disk full")

    with mock.patch.object(storage, "save", side_effect=half_write), pytest.raises(OSError):
        create(owner)

    assert not File.objects.exists()
    assert blobs_of(owner.org.pk, media_dir) == []


@pytest.mark.parametrize(
    ("filename", "content", "needle"),
    [
        ("data.csv", b"prompt,completion\na,b\n", "CSV files can't be used"),
        ("data.xlsx", b"PK\x03\x04rest", "XLSX files can't be used"),
        ("data.jsonl", b"PK\x03\x04rest", "ZIP archive"),
        ("data.jsonl", b"\xd0\xcf\x11\xe0rest", "legacy Office"),
    ],
)
def test_spreadsheets_and_archives_are_refused_for_training(
    owner: Persona, filename: str, content: bytes, needle: str
) -> None:
    with pytest.raises(ApiError) as caught:
        create(owner, filename=filename, content=content)

    assert (caught.value.status_code, caught.value.param) == (400, "file")
    assert caught.value.code == "invalid_file_format"
    assert needle in caught.value.message


def test_derived_files_remember_their_source(owner: Persona) -> None:
    source = create(owner)

    derived = create(owner, filename="train_prepared.jsonl", derived_from=source)

    assert derived.derived_from == source


def test_file_delete_removes_the_row_and_then_the_blob(
    owner: Persona, media_dir: Path, django_capture_on_commit_callbacks: Any
) -> None:
    file = create(owner)
    path = media_dir / file.blob.name

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.file_delete(file=file)
        assert path.exists()  # kept until the delete commits

    for callback in callbacks:
        callback()
    assert not File.objects.filter(pk=file.pk).exists()
    assert not path.exists()


@pytest.mark.parametrize("status", FineTuneJob.UNFINISHED)
def test_file_delete_is_refused_while_an_unfinished_job_uses_the_file(
    owner: Persona, status: str
) -> None:
    file = create(owner)
    job = make_job(file, status)

    with pytest.raises(ApiError) as caught:
        services.file_delete(file=file)

    assert caught.value.status_code == 400
    assert f"in use by fine-tune job {job.public_id}, which has not finished" in (
        caught.value.message
    )
    assert File.objects.filter(pk=file.pk).exists()


def test_file_delete_of_a_file_a_finished_job_refers_to_is_a_clear_400(owner: Persona) -> None:
    file = create(owner)
    job = make_job(file, FineTuneJob.Status.SUCCEEDED)

    with pytest.raises(ApiError) as caught:
        services.file_delete(file=file)

    assert caught.value.status_code == 400
    assert job.public_id in caught.value.message
    assert File.objects.filter(pk=file.pk).exists()
