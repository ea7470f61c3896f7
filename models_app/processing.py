"""Worker-side use cases for the model registry (run by models_app.tasks on the default queue):
building the exports the pages offer for download (models, checkpoints, CSVs of datasets)."""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from common import artifacts
from common.redact import redact
from common.transient import Renewer
from datasets import readers
from datasets.models import File
from jobs.checkpoints import model_dir_of
from jobs.models import Checkpoint, FineTuneJob
from models_app import files
from models_app.models import Export, FineTunedModel

logger = logging.getLogger(__name__)


def _zip_tree(source: Path, into: Path) -> None:
    """A merged model: every file under it, deflated."""
    with zipfile.ZipFile(into, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=str(path.relative_to(source)))


def directory_zip(*, source: Path, into: Path | BinaryIO) -> None:
    """An adapter's or weights' directory as a zip: safetensors and configs, no optimizer
    state."""
    wanted = {".safetensors", ".json", ".jinja", ".model", ".txt"}
    with zipfile.ZipFile(into, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix in wanted:
                # Weights barely deflate, and deflating a full fine-tune's GBs would cost minutes
                # of a worker's CPU for nothing: they are stored, the small files deflated.
                stored = path.suffix == ".safetensors"
                archive.write(
                    path,
                    arcname=path.name,
                    compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED,
                )


def _build_merged(model: FineTunedModel, into: Path) -> None:
    import engine.merge

    adapter = files.adapter_dir(model)
    if adapter is None:
        raise FileNotFoundError(f"no adapter for {model.name}")
    with tempfile.TemporaryDirectory(dir=into.parent) as work:
        merged = Path(work) / "merged"
        engine.merge.merge_adapter(files.base_model_dir(model.base), adapter, merged)
        _zip_tree(merged, into)


def _build_model_files(model: FineTunedModel, into: Path) -> None:
    source = files.adapter_dir(model) or files.weights_dir(model)
    if source is None:
        raise FileNotFoundError(f"The files of {model.name} are missing.")
    directory_zip(source=source, into=into)


def _build_checkpoint(checkpoint: Checkpoint, into: Path) -> None:
    source = Path(model_dir_of(checkpoint))
    full = checkpoint.job.method == FineTuneJob.Method.FULL
    marker = "config.json" if full else "adapter_config.json"
    if not (source / marker).is_file():
        raise FileNotFoundError(f"The files of {checkpoint.name} were removed by retention.")
    directory_zip(source=source, into=into)


def _build_csv(file: File, into: Path) -> None:
    """A prompt/completion file as CSV, formula-looking cells neutralised (readers.cell_text)."""
    with file.blob.open("rb") as stream, into.open("wb") as out:
        out.write(readers.csv_bytes(["prompt", "completion"], []))
        batch: list[list[str]] = []
        for _, value in readers.iter_jsonl(stream):
            if isinstance(value, dict):
                batch.append([readers.cell_text(value.get(k)) for k in readers.FIELDS])
            if len(batch) == 1000:
                out.write(readers.csv_bytes(None, batch))
                batch = []
        if batch:
            out.write(readers.csv_bytes(None, batch))


def _build(export: Export, into: Path) -> None:
    subject = files.export_subject(export)
    if isinstance(subject, FineTunedModel):
        if export.kind == Export.Kind.MERGED:
            _build_merged(subject, into)
        else:
            _build_model_files(subject, into)
    elif isinstance(subject, Checkpoint):
        _build_checkpoint(subject, into)
    else:
        _build_csv(subject, into)


def _subject_live(export_id: int) -> bool:
    """The export's subject still exists: its row (a checkpoint's, a file's) is not deleted,
    nor marked deleted (a model's, a file's)."""
    return Export.objects.filter(
        Q(model=None) | Q(model__deleted_at=None),
        Q(file=None) | Q(file__deleted_at=None),
        pk=export_id,
    ).exists()


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.TUNERY_LEASE_SECONDS)


def _claimable(now: datetime) -> Q:
    # Queued, or running under a lease that expired: its worker died.
    return Q(status=Export.Status.PENDING) | Q(status=Export.Status.RUNNING, lease_until__lt=now)


def export_build(*, export_id: int) -> None:
    """Build an export's file (models_app.files.export_path), for download.

    Idempotent: the row is claimed with one conditional UPDATE (pending, or running under an
    expired lease), so a duplicate delivery while one build runs does nothing and a finished
    export is not redone. The lease is renewed while the build runs; every write of this try
    is guarded by its attempt number. The file is written aside and renamed into place, so
    readers see either none or a whole one.
    """
    row = (
        Export.objects.select_related("model__base", "checkpoint__job", "file")
        .filter(pk=export_id)
        .first()
    )
    if row is None or not _subject_live(export_id):
        return
    subject = files.export_subject(row)
    target = files.export_path(row.kind, subject)
    now = timezone.now()
    if files.export_size(row.kind, subject) is not None:
        Export.objects.filter(pk=row.pk).update(status=Export.Status.READY, lease_until=None)
        return
    if not Export.objects.filter(_claimable(now), pk=row.pk).update(
        status=Export.Status.RUNNING,
        attempts=F("attempts") + 1,
        lease_until=_lease_until(),
        updated_at=now,
    ):
        logger.info("export %s is already running or done", export_id)
        return
    row.refresh_from_db(fields=["attempts"])
    mine = Export.objects.filter(pk=row.pk, status=Export.Status.RUNNING, attempts=row.attempts)
    if row.attempts > settings.TUNERY_WORK_MAX_TRIES:
        mine.update(
            status=Export.Status.FAILED,
            error=f"The export did not finish after {row.attempts - 1} tries: its worker was "
            "lost each time (it may have run out of memory).",
        )
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    renewer = Renewer(
        lambda: bool(mine.update(lease_until=_lease_until())),
        settings.TUNERY_LEASE_SECONDS / 3,
        f"export-{export_id}",
    )
    try:
        with renewer:
            _build(row, partial)
            partial.replace(target)
            # A remote store: the web host (any host) downloads it from there.
            artifacts.publish_file(target)
        mine.update(status=Export.Status.READY, error="", lease_until=None)
    except Exception as exc:
        # A failed export is shown on its page, and may be started again from there.
        logger.exception("export %s failed", export_id)
        mine.update(
            status=Export.Status.FAILED,
            error=redact(f"{type(exc).__name__}: {exc}"),  # shown on the page: no paths
            lease_until=None,
        )
    finally:
        partial.unlink(missing_ok=True)
        if not _subject_live(export_id):
            # Deleted while exporting: leave nothing behind.
            files.exports_remove(subject)


def export_merged_legacy(*, model_id: int) -> None:
    """A message queued before exports had their own rows' ids (models_app.export_merged_model
    took a model id): build that model's merged export."""
    row = Export.objects.filter(model_id=model_id, kind=Export.Kind.MERGED).first()
    if row is not None:
        export_build(export_id=row.pk)


def exports_sweep() -> list[int]:
    """Beat task: exports whose worker died (lease expired) or whose message was lost (pending
    for a lease period). Returns the export ids to send again; one out of tries fails."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TUNERY_LEASE_SECONDS)
    again: list[int] = []
    lost = Export.objects.filter(status=Export.Status.RUNNING, lease_until__lt=now)
    forgotten = Export.objects.filter(status=Export.Status.PENDING, updated_at__lt=stale)
    for row in lost | forgotten:
        current = Export.objects.filter(
            pk=row.pk, status=row.status, attempts=row.attempts, updated_at=row.updated_at
        )
        if row.status == Export.Status.RUNNING and row.attempts >= (settings.TUNERY_WORK_MAX_TRIES):
            current.update(
                status=Export.Status.FAILED,
                error=f"The export did not finish after {row.attempts} tries: its worker was "
                "lost each time (it may have run out of memory).",
                lease_until=None,
            )
        elif current.update(status=Export.Status.PENDING, updated_at=now):
            logger.warning("export %s lost its worker; sending it again", row.pk)
            again.append(row.pk)
    return again
