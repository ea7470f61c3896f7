"""Disk and data lifecycle: the retention policy, garbage collection, the disk report."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from datasets import services as file_services
from jobs import paths, retention, services
from jobs.models import Checkpoint, FineTuneJob, RetentionPolicy
from jobs.services import JobRequest
from models_app import files as model_files
from models_app import services as model_services
from models_app.models import Export, ModelPermission
from tests.conftest import Persona
from tests.factories import FileFactory

DAY = 24 * 3600


@pytest.fixture(autouse=True)
def data_dir(settings: Any, tmp_path: Path) -> Path:
    """A DATA_DIR of its own: collection must only ever see what the test put there."""
    settings.DATA_DIR = tmp_path / "data"
    settings.TUNERY_MODEL_CACHE_DIR = tmp_path / "data" / "model-cache"
    settings.TUNERY_WANDB_DIR = tmp_path / "data" / "wandb"
    return Path(settings.DATA_DIR)


def make_job(owner: Persona, status: str, *, finished_days_ago: float = 0) -> FineTuneJob:
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="current", model="ada", training_file=training.public_id),
        )
    finished = timezone.now() - timedelta(days=finished_days_ago)
    FineTuneJob.objects.filter(pk=job.pk).update(
        status=status, finished_at=finished if status in FineTuneJob.FINISHED else None
    )
    job.refresh_from_db()
    return job


def write(path: Path, size: int = 1000, age: float = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def resume_checkpoint(job: FineTuneJob, attempt: int = 1) -> Path:
    return write(paths.attempt_dir(job, attempt) / "resume" / "step-5" / "optimizer.pt", 5000)


def test_collection_applies_the_policy_to_work_dirs(owner: Persona) -> None:
    old_failure = make_job(owner, "failed", finished_days_ago=8)
    fresh_failure = make_job(owner, "cancelled", finished_days_ago=1)
    succeeded = make_job(owner, "succeeded")  # its runner crashed before cleaning up
    live = make_job(owner, "running")
    for job in (old_failure, fresh_failure, succeeded, live):
        resume_checkpoint(job)
    orphan = write(paths.jobs_root() / "ftjob-gone" / "attempt-1" / "x", age=2 * DAY)
    os.utime(orphan.parent.parent, (time.time() - 2 * DAY,) * 2)

    assert retention.reclaimable().bytes["job work dirs"] == 10_000
    freed = retention.collect_garbage()

    assert freed["bytes"] == 10_000 + 1000
    assert not paths.attempt_dirs(old_failure) and not paths.attempt_dirs(succeeded)
    assert paths.attempt_dirs(fresh_failure) and paths.attempt_dirs(live)
    assert not orphan.exists()
    assert retention.collect_garbage() == {"bytes": 0, "items": 0}  # idempotent


def checkpoint(job: FineTuneJob, step: int, *, exposed: bool = True) -> Checkpoint:
    folder = paths.checkpoints_dir(job) / f"step-{step}"
    write(folder / "model" / "adapter_model.safetensors")
    return Checkpoint.objects.create(
        job=job, step_number=step, epoch=step // 4, path=str(folder), exposed=exposed
    )


def test_checkpoints_are_unlisted_before_they_are_removed(owner: Persona) -> None:
    policy = retention.policy()
    policy.checkpoint_days = 30
    policy.save()
    old = make_job(owner, "succeeded", finished_days_ago=31)
    recent = make_job(owner, "succeeded", finished_days_ago=2)
    for job in (old, recent):
        checkpoint(job, 4)
    # A row whose directory is already gone (an older Tunery deleted it with the work dir).
    Checkpoint.objects.create(
        job=recent, step_number=8, epoch=2, path="/nonexistent/step-8", exposed=True
    )

    retention.collect_garbage()

    assert not Checkpoint.objects.filter(job=old).exists()
    assert not (paths.checkpoints_dir(old) / "step-4").exists()
    assert list(Checkpoint.objects.filter(job=recent).values_list("step_number", flat=True)) == [4]
    api = owner.api().get(f"/v1/fine_tuning/jobs/{recent.public_id}/checkpoints").json()
    assert [c["step_number"] for c in api["data"]] == [4]
    assert all(Path(c.path).is_dir() for c in Checkpoint.objects.all())


def test_a_removed_checkpoint_takes_its_prepared_download_with_it(owner: Persona) -> None:
    policy = retention.policy()
    policy.checkpoint_days = 30
    policy.save()
    old = checkpoint(make_job(owner, "succeeded", finished_days_ago=31), 4)
    recent = checkpoint(make_job(owner, "succeeded", finished_days_ago=2), 4)
    zips = {}
    for row in (old, recent):
        Export.objects.create(checkpoint=row, kind=Export.Kind.CHECKPOINT, status="ready",
                              updated_at=timezone.now())  # fmt: skip
        zips[row.pk] = write(model_files.export_path(Export.Kind.CHECKPOINT, row))
    stray = write(paths.exports_root() / "ftckpt_gone" / "checkpoint.zip")  # a row gone by hand

    retention.collect_garbage()

    assert not zips[old.pk].parent.exists() and not stray.exists()
    assert zips[recent.pk].is_file()
    assert list(Export.objects.values_list("checkpoint", flat=True)) == [recent.pk]


def built_export(row: Checkpoint, status: str = "ready", *, days_ago: float = 0) -> Path:
    """A checkpoint's zip as a worker left it: its row (`updated_at`: when its build was
    asked for, `days_ago`) and, once ready, its file."""
    Export.objects.create(
        checkpoint=row, kind=Export.Kind.CHECKPOINT, status=status,
        updated_at=timezone.now() - timedelta(days=days_ago),
        lease_until=timezone.now() + timedelta(minutes=5) if status == "running" else None,
    )  # fmt: skip
    path = model_files.export_path(Export.Kind.CHECKPOINT, row)
    return write(path) if status == "ready" else path


def test_built_exports_are_removed_after_export_days(owner: Persona) -> None:
    policy = retention.policy()
    assert policy.export_days == 7  # TUNERY_RETAIN_EXPORT_DAYS
    job = make_job(owner, "succeeded")
    old, recent, pending, running = (checkpoint(job, step) for step in (4, 8, 12, 16))
    old_zip = built_export(old, days_ago=8)
    recent_zip = built_export(recent, days_ago=6)
    # Being prepared: queued long ago (a busy worker), and running under its lease.
    built_export(pending, "pending", days_ago=8)
    built_export(running, "running", days_ago=8)

    assert retention.reclaimable().bytes["exports (expired)"] == 1000
    retention.collect_garbage()

    assert not old_zip.exists() and recent_zip.is_file()
    assert sorted(Export.objects.values_list("checkpoint", "status")) == [
        (recent.pk, "ready"), (pending.pk, "pending"), (running.pk, "running"),
    ]  # fmt: skip
    assert Checkpoint.objects.filter(job=job).count() == 4  # only the download went


def test_the_page_offers_prepare_again_once_an_export_expired(owner: Persona) -> None:
    job = make_job(owner, "succeeded")
    row = checkpoint(job, 4)
    built_export(row, days_ago=30)
    client = Client()
    client.force_login(owner.user)
    assert 'data-testid="checkpoint-download"' in client.get(job.get_absolute_url()).text

    retention.collect_garbage()

    page = client.get(job.get_absolute_url()).text
    assert 'data-testid="checkpoint-prepare"' in page and "checkpoint-download" not in page


def test_without_export_days_built_exports_stay(owner: Persona, settings: Any) -> None:
    settings.TUNERY_RETAIN_EXPORT_DAYS = 0  # the policy's first value: keep
    assert retention.policy().export_days is None
    zipped = built_export(checkpoint(make_job(owner, "succeeded"), 4), days_ago=400)

    retention.collect_garbage()

    assert zipped.is_file() and Export.objects.count() == 1


def test_an_export_restarted_while_collected_is_kept(owner: Persona) -> None:
    """The file goes first: a user who then sees "Prepare" and clicks it restarts the row,
    which the collection's guarded delete then leaves to its build."""
    row = checkpoint(make_job(owner, "succeeded"), 4)
    built_export(row, days_ago=8)
    real_add = retention.Collected.add

    def add_then_click(self: retention.Collected, category: str, path: Path, dry: bool) -> None:
        real_add(self, category, path, dry)
        with mock.patch("models_app.tasks.build_export.delay"):
            assert model_services.export_start(kind=Export.Kind.CHECKPOINT, subject=row)

    with mock.patch.object(retention.Collected, "add", add_then_click):
        retention.collect_garbage()

    assert Export.objects.get(checkpoint=row).status == "pending"


def test_gc_keeps_the_last_epochs_and_what_is_shared_or_continued_from(
    owner: Persona, outsider: Persona
) -> None:
    policy = retention.policy()
    policy.checkpoint_days = 30
    policy.save()
    old = make_job(owner, "succeeded", finished_days_ago=31)
    earlier_epoch = checkpoint(old, 4, exposed=False)  # not one of the last 3 epochs
    expired, shared, continued = checkpoint(old, 8), checkpoint(old, 12), checkpoint(old, 16)
    ModelPermission.objects.create(
        public_id="cp_test",
        organization=owner.org,
        grantee=outsider.org,
        model_name="ft:x:ckpt-step-12",
        checkpoint=shared,
    )
    child = make_job(owner, "queued")
    FineTuneJob.objects.filter(pk=child.pk).update(parent_checkpoint=continued)
    running = make_job(owner, "running")
    in_progress = checkpoint(running, 4, exposed=False)  # an unfinished job's: never touched

    retention.collect_garbage()

    kept = set(Checkpoint.objects.values_list("pk", flat=True))
    assert kept == {shared.pk, continued.pk, in_progress.pk}
    for gone in (earlier_epoch, expired):
        assert not Path(gone.path).exists()
    assert all(Path(c.path).is_dir() for c in Checkpoint.objects.all())

    # Without checkpoint_days the exposed ones stay; earlier epochs still go once finished.
    policy.checkpoint_days = None
    policy.save()
    recent = make_job(owner, "failed", finished_days_ago=400)
    recent_early, recent_last = checkpoint(recent, 4, exposed=False), checkpoint(recent, 8)
    retention.collect_garbage()
    assert not Checkpoint.objects.filter(pk=recent_early.pk).exists()
    assert Checkpoint.objects.filter(pk=recent_last.pk).exists()


def test_the_file_cache_is_bounded_and_forgets_deleted_and_idle_files(
    owner: Persona, settings: Any
) -> None:
    policy = retention.policy()
    policy.file_cache_max_bytes = 2500
    policy.file_cache_idle_days = 7
    policy.save()
    files = [FileFactory.create(organization=owner.org) for _ in range(5)]
    idle, oldest, older, newest, deleted = files
    write(paths.file_cache_path(idle), age=8 * DAY)
    write(paths.file_cache_path(oldest), age=3 * DAY)
    write(paths.file_cache_path(older), age=2 * DAY)
    write(paths.file_cache_path(newest), age=1 * DAY)
    write(paths.file_cache_path(deleted))
    file_services.file_delete(file=deleted)  # ...its copy goes with it (on commit, or by GC)
    # A job still to run keeps its file's copy, however old.
    needed = FileFactory.create(organization=owner.org)
    write(paths.file_cache_path(needed), age=30 * DAY)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="current", model="ada", training_file=needed.public_id),
        )

    retention.collect_garbage()

    left = sorted(p.name for p in paths.file_cache_root().iterdir())
    # 1000 bytes each, 2500 at most: the needed copy stays, then the most recently used.
    assert left == sorted([needed.public_id, newest.public_id])


def test_deleting_a_file_removes_its_cached_copy(
    owner: Persona, django_capture_on_commit_callbacks: Any
) -> None:
    file = FileFactory.create(organization=owner.org)
    copy = write(paths.file_cache_path(file))

    with django_capture_on_commit_callbacks(execute=True):
        file_services.file_delete(file=file)

    assert not copy.exists()


def test_disk_usage_reports_each_category_and_what_collection_would_free(
    owner: Persona, data_dir: Path
) -> None:
    failed = make_job(owner, "failed", finished_days_ago=30)
    resume_checkpoint(failed)
    write(paths.checkpoints_dir(failed) / "step-4" / "model" / "a.safetensors", 3000)
    write(paths.file_cache_root() / "file-abc", 2000, age=30 * DAY)
    write(data_dir / "tunery.sqlite3", 700)

    out = StringIO()
    call_command("disk_usage", "--json", stdout=out)
    report = json.loads(out.getvalue())

    sizes = {c["category"]: c["bytes"] for c in report["categories"]}
    assert sizes["job work dirs (resume checkpoints)"] == 5000
    assert sizes["epoch checkpoints"] == 3000
    assert sizes["file cache (training copies)"] == 2000
    assert sizes["other (database, broker, logs...)"] == 700
    assert report["reclaimable"]["bytes"] == {"job work dirs": 5000, "file cache": 2000}

    table = StringIO()
    call_command("disk_usage", "--collect", stdout=table)
    assert "Reclaimable now under the retention policy: 6.8 KiB" in table.getvalue()
    assert "Collected: 6.8 KiB (2 items)" in table.getvalue()
    assert not paths.attempt_dirs(failed)


def test_only_superusers_edit_the_retention_policy(owner: Persona) -> None:
    admin = User.objects.create_superuser("root", "root@example.com", "pw")
    staff_owner = owner.user
    staff_owner.is_staff = True
    staff_owner.save()
    client = Client()

    client.force_login(staff_owner)
    assert client.get("/admin/jobs/retentionpolicy/").status_code == 403
    client.force_login(admin)
    assert client.get("/admin/jobs/retentionpolicy/").status_code == 200
    response = client.post(
        "/admin/jobs/retentionpolicy/1/change/",
        {
            "work_days": "3",
            "checkpoint_days": "",
            "file_cache_max_bytes": "1000000",
            "file_cache_idle_days": "2",
        },
    )
    assert response.status_code == 302
    assert RetentionPolicy.objects.get().work_days == 3


def test_with_an_s3_store_collection_judges_and_removes_checkpoints_in_the_store(
    owner: Persona, settings: Any, s3_server: Any, tmp_path: Path
) -> None:
    """Beat's host never had the checkpoints' files (nor an export's): it must not take them
    for gone, and what the policy drops goes from the store."""
    from common import artifacts
    from common.store import put_tree

    env = s3_server.env(s3_server.new_bucket())
    settings.STORAGE_BACKEND = "s3"
    settings.S3_BUCKET, settings.S3_ENDPOINT_URL = env["S3_BUCKET"], env["S3_ENDPOINT_URL"]
    settings.S3_REGION = env["S3_REGION"]
    settings.S3_ACCESS_KEY_ID = env["S3_ACCESS_KEY_ID"]
    settings.S3_SECRET_ACCESS_KEY = env["S3_SECRET_ACCESS_KEY"]
    settings.TUNERY_STORE_CACHE_DIR = tmp_path / "cache"
    artifacts.reset()
    try:
        job = make_job(owner, "succeeded")
        src = write(tmp_path / "elsewhere" / "model" / "adapter_model.safetensors").parent.parent
        rows = {}
        for step, exposed in ((4, False), (8, True)):
            put_tree(artifacts.store(), f"jobs/{job.public_id}/checkpoints/step-{step}", src)
            rows[step] = Checkpoint.objects.create(
                job=job, step_number=step, epoch=step // 4, exposed=exposed,
                path=f"/another-host/data/jobs/{job.public_id}/checkpoints/step-{step}",
            )  # fmt: skip

        # The exposed one's zip, built on another host 8 days ago: only in the store.
        zipped = model_files.export_key(Export.Kind.CHECKPOINT, rows[8])
        artifacts.store().put_file(zipped, write(tmp_path / "elsewhere" / "checkpoint.zip"))
        built_export(rows[8], days_ago=8).unlink()
        assert artifacts.store().exists(zipped)

        retention.collect_garbage()

        # The unexposed one is gone, row and objects; the exposed one stays, files unseen here.
        assert list(Checkpoint.objects.filter(job=job).values_list("step_number", flat=True)) == [8]
        assert artifacts.store().list(f"jobs/{job.public_id}/checkpoints/step-4") == []
        assert artifacts.store().list(f"jobs/{job.public_id}/checkpoints/step-8")
        # Its expired zip went from the store, with its row.
        assert not artifacts.store().exists(zipped) and not Export.objects.exists()
    finally:
        artifacts.reset()
