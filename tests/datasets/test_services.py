"""The datasets use cases: file_create / file_delete (storage, naming, limits, enqueueing, nothing
half-written, deleting files finished jobs used), the findings and "Apply fixes", the staging sweep."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import IntegrityError
from django.db.models import ProtectedError

from common.errors import ServiceError
from datasets import prepare, processing, selectors, services, staging, tasks
from datasets.models import File
from jobs.models import FineTuneJob
from models_app.models import BaseModel
from tests.conftest import Persona
from tests.datasets.conftest import blobs_of, jsonl

GOOD = jsonl([{"prompt": "2+2 ->", "completion": " 4"}] * 3)


def create(persona: Persona, **kwargs: Any) -> File:
    options: dict[str, Any] = {
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
    with pytest.raises(ServiceError) as caught:
        create(owner, filename=raw)

    assert (caught.value.status_code, caught.value.param) == (400, "file")
    assert not File.objects.exists()


@pytest.mark.parametrize("purpose", ["assistants", "fine_tune", "", "batch"])
def test_unknown_purposes_are_refused(owner: Persona, purpose: str) -> None:
    with pytest.raises(ServiceError) as caught:
        create(owner, purpose=purpose)

    assert (caught.value.status_code, caught.value.param) == (400, "purpose")
    assert "'fine-tune'" in caught.value.message


def test_oversize_content_is_413_and_stores_nothing(
    owner: Persona, media_dir: Path, settings: Any
) -> None:
    settings.MAX_UPLOAD_BYTES = 10

    with pytest.raises(ServiceError) as caught:
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
    storage = File._meta.get_field("blob").storage

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
    with pytest.raises(ServiceError) as caught:
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
    assert file.blob.name  # stored: it has a name
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

    with pytest.raises(ServiceError) as caught:
        services.file_delete(file=file)

    assert caught.value.status_code == 400
    assert f"in use by fine-tune job {job.public_id}, which has not finished" in (
        caught.value.message
    )
    assert File.objects.filter(pk=file.pk).exists()


@pytest.mark.parametrize("status", FineTuneJob.FINISHED)
@pytest.mark.parametrize("role", ["training_file", "validation_file", "result_file"])
def test_a_file_only_finished_jobs_use_is_deleted_and_the_jobs_keep_its_id(
    owner: Persona,
    media_dir: Path,
    django_capture_on_commit_callbacks: Any,
    status: str,
    role: str,
) -> None:
    # As at OpenAI: delete is refused only while an unfinished job uses the file.
    file = create(owner)
    job = make_job(create(owner, filename="other.jsonl"), status)
    FineTuneJob.objects.filter(pk=job.pk).update(**{role: file})
    assert file.blob.name  # stored: it has a name
    path = media_dir / file.blob.name

    with django_capture_on_commit_callbacks(execute=True):
        services.file_delete(file=file)

    row = File.objects.get(pk=file.pk)  # kept for the job (PROTECT), soft-deleted
    assert (row.status, row.blob.name) == (File.Status.DELETED, "")
    assert row.deleted_at is not None
    assert not path.exists()
    job.refresh_from_db()
    assert getattr(job, f"{role}_id") == file.pk
    assert getattr(job, role).public_id == file.public_id
    assert selectors.file_find_for_org(organization=owner.org, file_id=file.public_id) is None
    assert file not in selectors.file_list_for_org(organization=owner.org)


def test_a_file_no_job_uses_loses_its_row(owner: Persona) -> None:
    file = create(owner)
    make_job(create(owner, filename="other.jsonl"), FineTuneJob.Status.SUCCEEDED)

    services.file_delete(file=file)

    assert not File.objects.filter(pk=file.pk).exists()


def test_a_job_created_on_the_file_meanwhile_keeps_the_row(owner: Persona) -> None:
    # The check for jobs and the delete aren't atomic with job creation: a job created in
    # between makes the delete protected, and the file is soft-deleted instead of a 500.
    file = create(owner)

    with mock.patch.object(File, "delete", side_effect=ProtectedError("in use", set())):
        services.file_delete(file=file)

    assert File.objects.get(pk=file.pk).status == File.Status.DELETED


def test_a_soft_deleted_source_is_unlinked_from_its_fixed_copies(owner: Persona) -> None:
    source = create(owner)
    make_job(source, FineTuneJob.Status.SUCCEEDED)
    copy = create(owner, filename="train_prepared.jsonl", derived_from=source)

    services.file_delete(file=source)

    copy.refresh_from_db()
    assert copy.derived_from is None


def test_a_deleted_file_cant_be_used_for_a_new_job(owner: Persona) -> None:
    from jobs.services import JobRequest, job_create

    file = create(owner)
    File.objects.filter(pk=file.pk).update(status=File.Status.PROCESSED)
    make_job(file, FineTuneJob.Status.SUCCEEDED)
    services.file_delete(file=file)

    with pytest.raises(ServiceError) as caught:
        job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api=FineTuneJob.Api.CURRENT,
                model="SmolLM2-135M-Instruct",
                training_file=file.public_id,
            ),
        )

    assert caught.value.param == "training_file"
    assert caught.value.status_code in (400, 404)


# --- findings and "Apply fixes" -----------------------------------------------------------------

UNPREPARED = jsonl([{"prompt": f"Question {i}", "completion": f"answer {i}"} for i in range(6)])
CLASSES = jsonl(
    [{"prompt": f"Text {i} ->", "completion": " ham" if i % 4 else " spam"} for i in range(40)]
)


def processed(persona: Persona, data: bytes, **kwargs: Any) -> File:
    file = create(persona, content=data, **kwargs)
    File.objects.filter(pk=file.pk).update(status=File.Status.PROCESSED)
    file.refresh_from_db()
    return file


def test_findings_are_read_not_computed_once_stored(owner: Persona) -> None:
    file = processed(owner, UNPREPARED)
    File.objects.filter(pk=file.pk).update(findings={"findings": [], "examples": 6})
    file.refresh_from_db()

    with mock.patch("datasets.processing.load_analysis") as analyse:
        findings = services.file_findings_ensure(file=file)

    analyse.assert_not_called()
    assert findings == {"findings": [], "examples": 6}


def test_findings_missing_from_a_validated_file_are_left_to_the_default_worker(
    owner: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    # Files validated before the worker stored findings: the page queues the analysis (up to
    # 64 MiB of reading) on the default worker and shows it pending; it never runs it itself.
    file = processed(owner, UNPREPARED)

    with (
        mock.patch("datasets.processing.load_analysis", side_effect=AssertionError),
        mock.patch("datasets.tasks.analyse_file.delay") as queued,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert services.file_findings_ensure(file=file) is None

    queued.assert_called_once_with(file.pk)
    assert services.file_analysis_pending(file=file)

    tasks.analyse_file(file.pk)  # what the default worker runs
    file.refresh_from_db()
    assert not services.file_analysis_pending(file=file)
    findings = services.file_findings_ensure(file=file)
    assert findings is not None and findings["examples"] == 6
    assert "completion_leading_space" in [f["id"] for f in findings["findings"]]


@pytest.mark.parametrize(
    ("status", "purpose"),
    [("uploaded", "fine-tune"), ("processed", "fine-tune-results")],
)
def test_no_findings_while_validating_or_for_results_files(
    owner: Persona, status: str, purpose: str
) -> None:
    file = create(owner, purpose=purpose)
    File.objects.filter(pk=file.pk).update(status=status)
    file.refresh_from_db()

    assert services.file_findings_ensure(file=file) is None


def test_apply_fixes_writes_a_fixed_copy_and_keeps_the_original(owner: Persona) -> None:
    file = processed(owner, UNPREPARED)

    fixed = services.file_apply_fixes(
        file=file,
        accepted=[prepare.ADD_PROMPT_SEPARATOR, prepare.ADD_COMPLETION_SPACE],
        uploaded_by=owner.user,
    )

    (copy,) = fixed.files
    assert (copy.filename, copy.derived_from, fixed.examples) == (
        "train_prepared.jsonl",
        file,
        [6],
    )
    first = json.loads(copy.blob.open("rb").readline())
    assert first == {"prompt": "Question 0 ->", "completion": " answer 0"}
    assert File.objects.get(pk=file.pk).blob.read() == UNPREPARED


def test_apply_fixes_splits_classification_data_stratified(owner: Persona) -> None:
    file = processed(owner, CLASSES, filename="sms.jsonl")

    fixed = services.file_apply_fixes(file=file, accepted=[prepare.SPLIT], uploaded_by=owner.user)

    train, valid = fixed.files
    assert (train.filename, valid.filename) == (
        "sms_prepared_train.jsonl",
        "sms_prepared_valid.jsonl",
    )
    assert fixed.examples == [32, 8]
    labels = [json.loads(line)["completion"] for line in valid.blob.open("rb")]
    assert sorted(labels) == [" ham"] * 6 + [" spam"] * 2  # 30/10 → 6/2: the data's shares
    assert fixed.split
    assert fixed.create_options == (
        ' --compute_classification_metrics --classification_positive_class " ham"'
    )


def test_apply_fixes_with_nothing_to_change_writes_nothing(owner: Persona) -> None:
    file = processed(owner, UNPREPARED)

    fixed = services.file_apply_fixes(file=file, accepted=[], uploaded_by=owner.user)

    assert fixed.files == []
    assert File.objects.filter(organization=owner.org).count() == 1


@pytest.mark.parametrize(
    ("setup", "accepted", "param", "needle"),
    [
        ("unknown_fix", ["drop_everything"], "accept", "review the fixes"),
        ("split_not_offered", [prepare.SPLIT], "accept", "review the fixes"),
        ("still_validating", [], "id", "Only validated training files"),
        ("too_large", [], "id", "too large to fix here"),
        ("blob_missing", [], "id", "Could not read the file"),
        ("fatal", [], "id", "can't be fixed automatically"),
    ],
)
def test_apply_fixes_refuses_with_a_400_naming_the_param(
    owner: Persona,
    monkeypatch: pytest.MonkeyPatch,
    setup: str,
    accepted: list[str],
    param: str,
    needle: str,
) -> None:
    data = UNPREPARED
    if setup == "fatal":
        data = jsonl([{"prompt": "same ->", "completion": f" {i}"} for i in range(5)])
    file = processed(owner, data)
    if setup == "still_validating":
        File.objects.filter(pk=file.pk).update(status=File.Status.UPLOADED)
        file.refresh_from_db()
    elif setup == "too_large":
        monkeypatch.setattr(processing, "ANALYZE_MAX_BYTES", 10)
    elif setup == "blob_missing":
        assert file.blob.name  # stored: it has a name
        file.blob.storage.delete(file.blob.name)

    with pytest.raises(ServiceError) as caught:
        services.file_apply_fixes(file=file, accepted=accepted, uploaded_by=owner.user)

    assert (caught.value.status_code, caught.value.param) == (400, param)
    assert needle in caught.value.message
    assert File.objects.filter(organization=owner.org).count() == 1


def test_apply_fixes_writes_both_halves_of_a_split_or_neither(
    owner: Persona, media_dir: Path
) -> None:
    file = processed(owner, CLASSES)
    real_create = services.file_create
    calls = []

    def second_fails(**kwargs: Any) -> File:
        calls.append(kwargs["filename"])
        if len(calls) == 2:
            raise ServiceError("storage full", param="file")
        return real_create(**kwargs)

    with (
        mock.patch("datasets.services.file_create", side_effect=second_fails),
        pytest.raises(ServiceError),
    ):
        services.file_apply_fixes(file=file, accepted=[prepare.SPLIT], uploaded_by=owner.user)

    assert list(File.objects.filter(organization=owner.org)) == [file]
    assert file.blob.name  # stored: it has a name
    assert blobs_of(owner.org.pk, media_dir) == [media_dir / file.blob.name]


# --- staged uploads (the mapping step) -----------------------------------------------------------


def stage(persona: Persona, data: bytes, *, age_hours: float) -> Path:
    path = staging.staging_save(organization=persona.org, upload=ContentFile(data, "x.csv"))
    local = Path(default_storage.path(path))
    when = time.time() - age_hours * 3600
    os.utime(local, (when, when))
    return local


def test_the_sweep_deletes_stale_staged_uploads_and_keeps_fresh_ones(
    owner: Persona, outsider: Persona, media_dir: Path
) -> None:
    stale = stage(owner, b"a,b\n1,2\n", age_hours=25)
    fresh = stage(owner, b"a,b\n3,4\n", age_hours=1)
    other_stale = stage(outsider, b"a,b\n5,6\n", age_hours=48)

    removed = staging.staging_sweep(max_age_seconds=24 * 3600)

    assert removed == 2
    assert not stale.exists()
    assert not other_stale.exists()
    assert not other_stale.parent.exists()  # the emptied org folder goes too
    assert fresh.exists()
    assert str(fresh).startswith(str(media_dir / "staging"))


def test_the_sweep_with_nothing_staged_does_nothing(media_dir: Path) -> None:
    assert staging.staging_sweep(max_age_seconds=60) == 0


def test_the_beat_task_sweeps_with_the_configured_age(owner: Persona, settings: Any) -> None:
    from config.celery import app
    from datasets import tasks

    settings.TUNERY_STAGING_MAX_AGE_SECONDS = 3600
    stale = stage(owner, b"a\n1\n", age_hours=2)
    fresh = stage(owner, b"a\n1\n", age_hours=0.5)

    assert tasks.sweep_staging() == 1

    assert (stale.exists(), fresh.exists()) == (False, True)
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "datasets.sweep_staging" in scheduled
