"""Use cases that write files: upload (create), delete, the prepare-data findings and fixes, and
the staged uploads of the mapping step. The API, the pages and the admin call these."""

from __future__ import annotations

import logging
import posixpath
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import PurePath
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.base import File as DjangoFile
from django.core.files.storage import Storage
from django.db import transaction
from django.db.models import ProtectedError, Q
from django.utils import timezone

from accounts.models import Organization
from common.errors import ServiceError
from common.redact import redact
from datasets import prepare, processing, readers, tasks
from datasets.models import File, blob_path
from datasets.validation import BINARY_SIGNATURES
from jobs.models import FineTuneJob
from jobs.paths import file_cache_path
from models_app.files import exports_remove
from models_app.models import Export

logger = logging.getLogger(__name__)

PURPOSES = (File.Purpose.FINE_TUNE.value, File.Purpose.FINE_TUNE_RESULTS.value)
# What a client may upload. Results files are written by the runner only: an uploaded one would
# be stored unvalidated as "processed" (a PNG once was) and passed off as a job's results.
UPLOAD_PURPOSES = (File.Purpose.FINE_TUNE.value,)
MAX_FILENAME_CHARS = 255
# Formats people try to fine-tune on directly. The pages (and `manage.py prepare_data`) convert
# them; the API wants the JSONL, as OpenAI's does.
SPREADSHEET_EXTENSIONS = {".csv": "CSV", ".tsv": "TSV", ".xlsx": "XLSX", ".xls": "XLS"}
SPREADSHEET_EXTENSIONS |= {".xlsm": "XLSM", ".ods": "ODS"}


def too_large(size: int | None = None) -> ServiceError:
    limit = settings.MAX_UPLOAD_BYTES
    got = f" (got {size:,} bytes)" if size is not None else ""
    return ServiceError(
        f"The file is too large{got}: the maximum upload size is {limit:,} bytes "
        f"({limit / 2**20:.0f} MiB).",
        status=413,
        param="file",
        code="file_too_large",
    )


def clean_filename(raw: str) -> str:
    """The display name of an upload: its basename, without control characters.

    The name is only ever shown and compared (the 0.28 CLI matches duplicates by basename); the
    blob is stored under the file's public id (`datasets.models.blob_path`).
    """
    name = raw.replace("\\", "/")
    name = posixpath.basename(name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in ("", ".", ".."):
        raise ServiceError(
            "The file has no usable filename (it is empty after removing the path and control "
            "characters).",
            param="file",
        )
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1] + "." + keep if keep else name[:255]
    return name


def _as_file(content: DjangoFile[bytes] | bytes) -> DjangoFile[bytes]:
    if isinstance(content, bytes | bytearray):
        return ContentFile(bytes(content))
    return content


def _head(content: DjangoFile[bytes]) -> bytes:
    content.seek(0)
    head = content.read(8)
    content.seek(0)
    return bytes(head)


def _check_training_upload(name: str, content: DjangoFile[bytes]) -> None:
    """Refuse, before storing anything, training files that can't be JSONL at all."""
    ext = posixpath.splitext(name)[1].lower()
    if ext in SPREADSHEET_EXTENSIONS:
        raise ServiceError(
            f"{SPREADSHEET_EXTENSIONS[ext]} files can't be used for fine-tuning directly: upload "
            "JSONL (one JSON object per line). The upload page converts spreadsheets, and so "
            "does `python manage.py prepare_data -f FILE`.",
            param="file",
            code="invalid_file_format",
        )
    head = _head(content)
    for signature, kind in BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise ServiceError(
                f"The file is {kind}, not JSONL. Fine-tuning needs a JSONL file: one JSON "
                "object per line.",
                param="file",
                code="invalid_file_format",
            )


def file_upload(
    *,
    organization: Organization,
    uploaded_by: User | None,
    filename: str,
    purpose: str,
    content: DjangoFile[bytes] | bytes,
) -> File:
    """A client's upload (the Files API): `file_create` for the purposes a user may upload."""
    if purpose not in UPLOAD_PURPOSES:
        written = purpose in PURPOSES
        raise ServiceError(
            f"'{purpose[:100]}' is not a supported purpose for uploads"
            + (" (Tunery writes those files itself)" if written else "")
            + ". Upload training data with purpose "
            + " or ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            + ".",
            param="purpose",
        )
    return file_create(
        organization=organization,
        uploaded_by=uploaded_by,
        filename=filename,
        purpose=purpose,
        content=content,
    )


def file_create(
    *,
    organization: Organization,
    uploaded_by: User | None,
    filename: str,
    purpose: str,
    content: DjangoFile[bytes] | bytes,
    derived_from: File | None = None,
) -> File:
    """Store an upload and create its File; training files are then validated by a worker.

    Raises ServiceError: 400 for a bad purpose, name or format (param `purpose` / `file`), 413 over
    settings.MAX_UPLOAD_BYTES. On any failure nothing is left behind: no row and no blob.
    """
    if purpose not in PURPOSES:
        raise ServiceError(
            f"'{purpose}' is not a supported purpose. Tunery accepts "
            + " and ".join(f"'{p}'" for p in PURPOSES)
            + ".",
            param="purpose",
        )
    name = clean_filename(filename)
    upload = _as_file(content)
    size = upload.size
    if size is not None and size > settings.MAX_UPLOAD_BYTES:
        raise too_large(size)
    if not size:
        raise ServiceError("The file is empty.", param="file")
    if purpose == File.Purpose.FINE_TUNE:
        _check_training_upload(name, upload)

    file = File(
        organization=organization,
        uploaded_by=uploaded_by,
        filename=name,
        purpose=purpose,
        bytes=size,
        derived_from=derived_from,
    )
    if purpose == File.Purpose.FINE_TUNE_RESULTS:
        # Written by our own runner: nothing to validate.
        file.status = File.Status.PROCESSED
        file.format = File.Format.RESULTS
    upload.seek(0)
    # blob_path names the blob after the public id, never after `name`.
    blob_name = blob_path(file, name)
    storage = file.blob.storage
    try:
        file.blob.save(name, upload, save=False)
        with transaction.atomic():
            file.save()
            if purpose == File.Purpose.FINE_TUNE:
                # After commit, so the worker never looks for a row that isn't there yet.
                transaction.on_commit(partial(tasks.validate_file.delay, file.pk))
    except BaseException:
        # Also covers a blob the storage began writing and never finished.
        for stored in {name for name in (file.blob.name, blob_name) if name}:
            if storage.exists(stored):
                storage.delete(stored)
        raise
    return file


def unfinished_jobs_using(file: File) -> list[str]:
    jobs = FineTuneJob.objects.filter(_jobs_using(file), status__in=FineTuneJob.UNFINISHED)
    return list(jobs.values_list("public_id", flat=True)[:5])


def _jobs_using(file: File) -> Q:
    return Q(training_file=file) | Q(validation_file=file) | Q(result_file=file)


def file_delete(*, file: File) -> None:
    """Delete a file and (after commit) its blob. Refused (400) while an unfinished job uses it.

    As at OpenAI, a file that only finished jobs (succeeded, failed, cancelled) use can be
    deleted. Those jobs keep referring to its row (jobs.FineTuneJob's PROTECT foreign keys), so
    that row stays, soft-deleted: status `deleted`, `deleted_at` set, no blob. The selectors
    leave it out, so the API answers 404 for it and no page or new job can use it; the jobs
    still show its id. A file no job refers to loses its row.
    """
    running = unfinished_jobs_using(file)
    if running:
        raise ServiceError(
            f"File {file.public_id} is in use by fine-tune job {', '.join(running)}, which has "
            "not finished. Cancel the job or wait for it to finish, then delete the file.",
            param="id",
        )
    blob_name = file.blob.name
    storage = file.blob.storage
    with transaction.atomic():
        Export.objects.filter(file=file).delete()
        if FineTuneJob.objects.filter(_jobs_using(file)).exists():
            _soft_delete(file)
        else:
            try:
                file.delete()
            except ProtectedError:
                # A job created on the file since the check above: keep the row for it. (The
                # collector raises before deleting anything, so the transaction is intact.)
                _soft_delete(file)
    # Only once the row is surely gone (or marked): a rolled-back delete must not lose data.
    if blob_name:
        transaction.on_commit(partial(_delete_blob, storage, blob_name))
    # And the workers' local copy: no job may use the file any more (jobs.retention sweeps a
    # copy on another host's disk).
    transaction.on_commit(partial(_delete_cached_copy, file.public_id))
    # And its CSV export, if one was prepared (the row went above).
    transaction.on_commit(partial(exports_remove, file))


def _delete_cached_copy(public_id: str) -> None:
    try:
        file_cache_path(public_id).unlink(missing_ok=True)
    except OSError:
        logger.exception("Could not delete the cached copy of %s", public_id)


def _soft_delete(file: File) -> None:
    now = timezone.now()
    File.objects.filter(pk=file.pk).update(
        status=File.Status.DELETED,
        status_details="The file was deleted.",
        deleted_at=now,
        blob="",
        findings=[],
    )
    # As a real delete would (derived_from is SET_NULL): no link to a file that is gone.
    File.objects.filter(derived_from=file).update(derived_from=None)
    file.status, file.deleted_at, file.blob.name = File.Status.DELETED, now, ""


def _delete_blob(storage: Storage, name: str | None) -> None:
    if not name:
        return
    try:
        storage.delete(name)
    except OSError:
        logger.exception("Could not delete blob %s; it is orphaned", name)


def file_open(*, file: File) -> IO[bytes]:
    """The stored bytes, for download. ServiceError 404 if the blob has gone missing."""
    try:
        return file.blob.open("rb")
    except FileNotFoundError:
        raise ServiceError(
            f"The content of {file.public_id} is no longer available.", status=404, param="id"
        ) from None


# --- the prepare-data analysis: findings and "Apply fixes" --------------------------------------


def file_findings_ensure(*, file: File) -> dict[str, Any] | None:
    """The file's prepare-data findings, as File.findings stores them; never computed here.

    The validation worker stores them right after validating (`processing.file_analyse`), so
    this normally only reads. For a file validated before the worker did that, it queues the
    analysis on the default worker (up to 64 MiB of reading: no work for a web request) and
    returns None; `file_analysis_pending` then says the page should poll. None also while there
    are none to have: the file is still being validated, or isn't training data.
    """
    if not file.findings and _analysable(file):
        transaction.on_commit(partial(tasks.analyse_file.delay, file.pk))
    return file.findings or None


def file_analysis_pending(*, file: File) -> bool:
    """A validated training file whose findings the default worker has yet to store."""
    return not file.findings and _analysable(file)


def _analysable(file: File) -> bool:
    return (
        file.purpose == File.Purpose.FINE_TUNE
        and file.status in (File.Status.PROCESSED, File.Status.ERROR)
        and file.deleted_at is None
    )


@dataclass
class Fixed:
    """What `file_apply_fixes` made: the new files (none if there was nothing to change)."""

    files: list[File]
    examples: list[int]  # per file
    split: bool
    create_options: str  # the suggested `fine_tunes.create` options after a split


def file_apply_fixes(*, file: File, accepted: Iterable[str], uploaded_by: User | None) -> Fixed:
    """Apply the necessary and the accepted recommended fixes to a copy of `file`.

    `accepted` holds remediation ids (and `prepare.SPLIT` for the train/validation split). The
    result is one new file derived from `file`, or a train/validation pair (both or neither);
    `file` itself never changes. Raises ServiceError 400 when the file can't be fixed here (not
    training data, too large, unreadable, stopped on an error) or `accepted` names a fix the
    analysis doesn't offer (the file was analysed again since the page was shown).
    """
    if file.purpose != File.Purpose.FINE_TUNE or not _analysable(file):
        raise ServiceError("Only validated training files can be fixed.", param="id")
    if file.bytes > processing.ANALYZE_MAX_BYTES:
        raise ServiceError(
            f"{file.filename} is too large to fix here (over "
            f"{processing.ANALYZE_MAX_BYTES // 2**20} MiB); download it and run "
            "`python manage.py prepare_data -f FILE` on it.",
            param="id",
        )
    try:
        analysis = processing.load_analysis(file)
    except (readers.ReadError, OSError) as exc:
        reason = redact(str(getattr(exc, "message", exc)))
        raise ServiceError(f"Could not read the file: {reason}", param="id") from None
    wanted = set(accepted)
    offered = {r.id for r in analysis.recommended}
    if analysis.offers_split:
        offered.add(prepare.SPLIT)
    if not wanted <= offered:
        raise ServiceError(
            "The file changed since the page was shown; review the fixes.", param="accept"
        )
    try:
        rows, outputs = prepare.apply(analysis, wanted)
    except ValueError as exc:
        raise ServiceError(
            f"These problems can't be fixed automatically: {exc}", param="id"
        ) from None
    if not outputs.changed and not outputs.split:
        return Fixed([], [], False, "")
    if not rows:
        raise ServiceError("The fixes would leave no examples, so nothing was written.", param="id")

    stem = PurePath(file.filename).stem or "dataset"
    if outputs.split:
        parts = [
            (f"{stem}_prepared_train.jsonl", outputs.train or []),
            (f"{stem}_prepared_valid.jsonl", outputs.valid or []),
        ]
    else:
        parts = [(f"{stem}_prepared.jsonl", rows)]
    created: list[File] = []
    try:
        with transaction.atomic():  # both halves of a split or neither
            for name, part in parts:
                created.append(
                    file_create(
                        organization=file.organization,
                        uploaded_by=uploaded_by,
                        filename=name,
                        purpose=File.Purpose.FINE_TUNE,
                        content=ContentFile(prepare.jsonl_bytes(part), name=name),
                        derived_from=file,
                    )
                )
    except BaseException:
        # The rows rolled back; the blobs already stored must go too.
        for done in created:
            _delete_blob(done.blob.storage, done.blob.name)
        raise
    return Fixed(created, [len(part) for _, part in parts], outputs.split, outputs.create_options)
