"""What stays on disk, and for how long: the retention policy, the garbage collector (beat's
hourly `jobs.collect_garbage`) and the disk report (`manage.py disk_usage`).

What it collects, under DATA_DIR:
- `jobs/<job>/attempt-*`: the work dirs (resume checkpoints) of cancelled and failed jobs after
  `work_days`, of succeeded ones at once (the runner removes them; this catches a crash), and
  whole dirs of jobs that no longer exist;
- `jobs/<job>/checkpoints/step-N`: the per-epoch model checkpoints (jobs.checkpoints), which
  are served as models from there. Once the job finished, those not exposed (epochs before the
  last 3: OpenAI's policy) at once; the exposed ones after `checkpoint_days` (if set), except a
  checkpoint shared with another organization (ModelPermission) or one an unfinished job
  continues from. Their Checkpoint rows go first, so the API never lists a removed checkpoint.
  A row whose directory is gone anyway stops being listed too;
- `cache/files/<file>`: copies of deleted files at once; copies no unfinished job needs when
  idle for `file_cache_idle_days`, or least recently used first while the cache is over
  `file_cache_max_bytes`;
- `models/` and `exports/`: files of deleted models, and directories no model refers to; the
  exports (zips, CSVs) of deleted checkpoints and files, and built exports older than
  `export_days` (their rows too, so their pages offer "Prepare" again).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from common import artifacts
from datasets.models import File
from jobs import checkpoints, paths
from jobs.models import Checkpoint, FineTuneJob, RetentionPolicy
from models_app import files as model_files
from models_app.models import Export, FineTunedModel

logger = logging.getLogger(__name__)

# A directory nothing refers to may be one being created right now (a model renamed into place
# just before its row is committed): only collect such orphans once they are this old.
ORPHAN_GRACE_SECONDS = 24 * 3600
DAY = 24 * 3600


def policy() -> RetentionPolicy:
    """The one retention policy row, created with the settings' defaults on first use."""
    row, _ = RetentionPolicy.objects.get_or_create(
        pk=1,
        defaults={
            "work_days": settings.TUNERY_RETAIN_WORK_DAYS,
            "checkpoint_days": settings.TUNERY_RETAIN_CHECKPOINT_DAYS or None,
            "file_cache_max_bytes": settings.TUNERY_FILE_CACHE_MAX_BYTES,
            "file_cache_idle_days": settings.TUNERY_FILE_CACHE_IDLE_DAYS,
            "export_days": settings.TUNERY_RETAIN_EXPORT_DAYS or None,
        },
    )
    return row


def size_of(path: Path) -> int:
    """Bytes under `path` (a hard-linked file counted once)."""
    if path.is_symlink() or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@dataclass
class Collected:
    """What a collection removed (or, dry, would remove): bytes and items per category."""

    bytes: dict[str, int] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)

    def add(self, category: str, path: Path, dry_run: bool) -> None:
        self.bytes[category] = self.bytes.get(category, 0) + size_of(path)
        self.items[category] = self.items.get(category, 0) + 1
        if not dry_run:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def as_dict(self) -> dict[str, int]:
        return {"bytes": sum(self.bytes.values()), "items": sum(self.items.values())}


def _old(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _children(root: Path) -> Iterator[Path]:
    return root.iterdir() if root.is_dir() else iter(())


def collect_garbage(*, dry_run: bool = False) -> dict[str, int]:
    """Apply the retention policy once. Returns {"bytes", "items"} removed."""
    done = Collected()
    rules = policy()
    _collect_jobs(rules, done, dry_run)
    _collect_file_cache(rules, done, dry_run)
    _collect_models(done, dry_run)
    _collect_exports(rules, done, dry_run)
    if done.items:
        logger.info("garbage collection%s: %s", " (dry run)" if dry_run else "", done.bytes)
    return done.as_dict()


def reclaimable() -> Collected:
    done = Collected()
    rules = policy()
    _collect_jobs(rules, done, dry_run=True)
    _collect_file_cache(rules, done, dry_run=True)
    _collect_models(done, dry_run=True)
    _collect_exports(rules, done, dry_run=True)
    return done


# --- jobs -----------------------------------------------------------------------------------------


def _collect_jobs(rules: RetentionPolicy, done: Collected, dry_run: bool) -> None:
    now = timezone.now()
    root = paths.jobs_root()
    on_disk = {p.name: p for p in _children(root) if p.is_dir()}
    jobs = {
        j.public_id: j
        for j in FineTuneJob.objects.filter(public_id__in=list(on_disk)).only(
            "public_id", "status", "finished_at"
        )
    }
    work_cutoff = now - timedelta(days=rules.work_days)
    for name, folder in on_disk.items():
        job = jobs.get(name)
        if job is None:
            if _old(folder, ORPHAN_GRACE_SECONDS):
                done.add("jobs (deleted)", folder, dry_run)
            continue
        if not job.is_finished:
            continue  # running, queued or paused: its resume checkpoints are still needed
        finished = job.finished_at or now
        if job.status == FineTuneJob.Status.SUCCEEDED or finished < work_cutoff:
            for attempt in paths.attempt_dirs(job):
                done.add("job work dirs", attempt, dry_run)
            legacy = folder / "work"  # the layout before per-attempt dirs
            if legacy.is_dir():
                done.add("job work dirs", legacy, dry_run)

    _collect_checkpoints(rules, done, dry_run)


def _collect_checkpoints(rules: RetentionPolicy, done: Collected, dry_run: bool) -> None:
    now = timezone.now()
    finished = Checkpoint.objects.filter(job__status__in=FineTuneJob.FINISHED)
    # Earlier epochs are never listed nor usable: nothing needs them once the job is over
    # (resuming uses the resume checkpoints, not these).
    doomed = list(
        finished.filter(exposed=False)
        .select_related("job")
        .only("pk", "public_id", "path", "step_number", "job__public_id")
    )
    if rules.checkpoint_days is not None:
        cutoff = now - timedelta(days=rules.checkpoint_days)
        continued_from = FineTuneJob.objects.filter(
            status__in=FineTuneJob.UNFINISHED, parent_checkpoint__isnull=False
        ).values("parent_checkpoint")
        expired = (
            finished.filter(exposed=True, job__finished_at__lt=cutoff)
            # Another organization was given it: it stays until the grant is revoked.
            .filter(permissions__isnull=True)
            .exclude(pk__in=continued_from)
            .distinct()
        )
        doomed += list(
            expired.select_related("job").only(
                "pk", "public_id", "path", "step_number", "job__public_id"
            )
        )
    remote = artifacts.is_remote()
    for row in doomed:
        if not dry_run:
            Checkpoint.objects.filter(pk=row.pk).delete()  # unlisted before removed
            model_files.exports_remove(row)  # its zip, if one was prepared
            if remote:  # its objects too: this host's disk is not where it lives
                artifacts.delete_tree(checkpoints.stored_key(row))
        folder = Path(row.path)
        if row.path and folder.is_dir() and _is_checkpoint_dir(folder):
            done.add("epoch checkpoints", folder, dry_run)
    # A row whose directory is gone (removed by hand, or by an older Tunery at the job's end)
    # names a checkpoint nobody can use: stop listing it. With a remote store, "gone" means
    # gone from the store (this host may never have had the files).
    gone = {row.pk for row in doomed}
    for row in finished.select_related("job").only(
        "pk", "public_id", "path", "step_number", "job__public_id"
    ):
        missing = not checkpoints.has_files(row) if remote else not Path(row.path).exists()
        if row.pk not in gone and row.path and missing:
            category = "checkpoint rows (missing files)"
            done.bytes.setdefault(category, 0)
            done.items[category] = done.items.get(category, 0) + 1
            if not dry_run:
                Checkpoint.objects.filter(pk=row.pk).delete()
                model_files.exports_remove(row)


def _is_checkpoint_dir(folder: Path) -> bool:
    """Only ever remove `jobs/<job>/checkpoints/step-N`, whatever a row says."""
    root = paths.jobs_root().resolve()
    resolved = folder.resolve()
    return (
        resolved.is_relative_to(root)
        and resolved.parent.name == "checkpoints"
        and resolved.name.startswith("step-")
    )


# --- the file cache -----------------------------------------------------------------------------


def _collect_file_cache(rules: RetentionPolicy, done: Collected, dry_run: bool) -> None:
    root = paths.file_cache_root()
    copies = [p for p in _children(root) if p.is_file()]
    if not copies:
        return
    partial = [p for p in copies if p.name.startswith(".")]
    for path in partial:  # a copy interrupted by a killed worker
        if _old(path, DAY):
            done.add("file cache", path, dry_run)
    copies = [p for p in copies if not p.name.startswith(".")]
    live = set(
        File.objects.filter(public_id__in=[p.name for p in copies], deleted_at=None).values_list(
            "public_id", flat=True
        )
    )
    needed = _files_needed_by_unfinished_jobs()
    kept: list[tuple[float, int, Path]] = []
    idle = rules.file_cache_idle_days * DAY
    for path in copies:
        if path.name not in live:
            done.add("file cache", path, dry_run)  # its file was deleted
        elif path.name in needed:
            continue
        elif _old(path, idle):
            done.add("file cache", path, dry_run)
        else:
            st = path.stat()
            kept.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in kept) + sum(
        size_of(root / name) for name in needed if (root / name).is_file()
    )
    for _, size, path in sorted(kept):  # least recently used first
        if total <= rules.file_cache_max_bytes:
            break
        done.add("file cache", path, dry_run)
        total -= size


def _files_needed_by_unfinished_jobs() -> set[str]:
    unfinished = FineTuneJob.objects.filter(status__in=FineTuneJob.UNFINISHED)
    ids: set[str] = set()
    for training, validation in unfinished.values_list(
        "training_file__public_id", "validation_file__public_id"
    ):
        ids.update(i for i in (training, validation) if i)
    return ids


def file_cache_remove(public_id: str) -> None:
    """Remove a file's local copy (the file was deleted: no job may use it any more)."""
    paths.file_cache_path(public_id).unlink(missing_ok=True)


# --- models and exports -------------------------------------------------------------------------


def _collect_models(done: Collected, dry_run: bool) -> None:
    models_root = paths.models_root()
    live_dirs: set[Path] = set()
    for model in FineTunedModel.objects.all().only(
        "pk", "name", "artifact_dir", "deleted_at", "method"
    ):
        root = model_files.artifact_root(model)
        if model.deleted_at is None:
            live_dirs.add(root.resolve())
        elif root.exists() and root.resolve().is_relative_to(models_root.resolve()):
            done.add("models (deleted)", root, dry_run)
    for org_dir in _children(models_root):
        if not org_dir.name.isdigit():
            continue  # not the runner's models/<org>/<job> layout: not ours to judge
        for folder in _children(org_dir):
            if folder.resolve() not in live_dirs and _old(folder, ORPHAN_GRACE_SECONDS):
                done.add("models (orphaned)", folder, dry_run)

    # Exports of live models, checkpoints and files (a deleted checkpoint's or file's rows
    # went with it; a file kept for its jobs is marked deleted).
    live_exports = {
        model_files.exports_dir(m).name
        for m in FineTunedModel.objects.filter(deleted_at=None).only("pk", "name")
    }
    live_exports.update(
        Export.objects.filter(checkpoint__isnull=False).values_list(
            "checkpoint__public_id", flat=True
        )
    )
    live_exports.update(
        Export.objects.filter(file__isnull=False, file__deleted_at=None).values_list(
            "file__public_id", flat=True
        )
    )
    for folder in _children(paths.exports_root()):
        if folder.name not in live_exports:
            done.add("exports (deleted subjects)", folder, dry_run)


def _collect_exports(rules: RetentionPolicy, done: Collected, dry_run: bool) -> None:
    """Built downloads older than `export_days` (counted from the row's `updated_at`: when
    its build last started): the file (here and in the store), then the row, so the page
    offers "Prepare" again. Only ready ones: a queued or running build (under its lease) is
    never touched, and the row's delete is guarded by the state it was judged in, so one
    restarted meanwhile (its file already gone) stays and builds."""
    if rules.export_days is None:
        return
    cutoff = timezone.now() - timedelta(days=rules.export_days)
    expired = Export.objects.filter(status=Export.Status.READY, updated_at__lt=cutoff)
    for row in expired.select_related("model", "checkpoint", "file"):
        subject = model_files.export_subject(row)
        done.add("exports (expired)", model_files.export_path(row.kind, subject), dry_run)
        if not dry_run:
            model_files.export_remove(row.kind, subject)  # and its object in the store
            Export.objects.filter(
                pk=row.pk, status=Export.Status.READY, updated_at=row.updated_at
            ).delete()


# --- the disk report ----------------------------------------------------------------------------


@dataclass
class Usage:
    category: str
    bytes: int
    items: int
    inside: bool = True  # under DATA_DIR (the model cache may live elsewhere)


def _usage(category: str, folders: Iterable[Path], root: Path) -> Usage:
    found = [f for f in folders if f.exists()]
    inside = all(f.resolve().is_relative_to(root.resolve()) for f in found)
    return Usage(category, sum(size_of(f) for f in found), len(found), inside)


def disk_usage() -> list[Usage]:
    """What uses the disk under DATA_DIR (and the model cache), by category."""
    data = Path(settings.DATA_DIR)
    job_dirs = [p for p in _children(paths.jobs_root()) if p.is_dir()]
    rows = [
        _usage("uploaded files (local storage)", (data / "media" / "files").glob("*/*"), data),
        _usage("staged uploads", (data / "media" / "staging").glob("*/*"), data),
        _usage("file cache (training copies)", list(_children(paths.file_cache_root())), data),
        _usage(
            "job work dirs (resume checkpoints)",
            [a for j in job_dirs for a in paths.attempt_dirs(j.name)]
            + [j / "work" for j in job_dirs if (j / "work").is_dir()],
            data,
        ),
        _usage("epoch checkpoints", [j / "checkpoints" for j in job_dirs], data),
        _usage(
            "fine-tuned models",
            [f for org in _children(paths.models_root()) for f in _children(org)],
            data,
        ),
        _usage("exports (merged models, zips, CSVs)", list(_children(paths.exports_root())), data),
        _usage("base model cache", [Path(settings.TUNERY_MODEL_CACHE_DIR)], data),
        _usage("W&B offline runs", [Path(settings.TUNERY_WANDB_DIR)], data),
    ]
    counted = sum(r.bytes for r in rows if r.inside)
    rows.append(Usage("other (database, broker, logs...)", max(0, size_of(data) - counted), 0))
    return rows
