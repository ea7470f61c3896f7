"""Use cases that write files: upload (create) and delete. The API and the pages call these."""

from __future__ import annotations

import logging
import posixpath
import unicodedata
from functools import partial
from typing import IO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.core.files.base import File as DjangoFile
from django.db import transaction
from django.db.models import ProtectedError, Q

from accounts.models import Organization
from config.api import ApiError
from datasets import tasks
from datasets.models import File, blob_path
from datasets.processing import BINARY_SIGNATURES
from jobs.models import FineTuneJob

logger = logging.getLogger(__name__)

PURPOSES = (File.Purpose.FINE_TUNE.value, File.Purpose.FINE_TUNE_RESULTS.value)
MAX_FILENAME_CHARS = 255
# Formats people try to fine-tune on directly. The pages (and `manage.py prepare_data`) convert
# them; the API wants the JSONL, as OpenAI's does.
SPREADSHEET_EXTENSIONS = {".csv": "CSV", ".tsv": "TSV", ".xlsx": "XLSX", ".xls": "XLS"}
SPREADSHEET_EXTENSIONS |= {".xlsm": "XLSM", ".ods": "ODS"}


def too_large(size: int | None = None) -> ApiError:
    limit = settings.MAX_UPLOAD_BYTES
    got = f" (got {size:,} bytes)" if size is not None else ""
    return ApiError(
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
        raise ApiError(
            "The file has no usable filename (it is empty after removing the path and control "
            "characters).",
            param="file",
        )
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        keep = ext if dot and len(ext) <= 16 else ""
        name = name[: MAX_FILENAME_CHARS - len(keep) - 1] + "." + keep if keep else name[:255]
    return name


def _as_file(content: DjangoFile | bytes) -> DjangoFile:
    if isinstance(content, bytes | bytearray):
        return ContentFile(bytes(content))
    return content


def _head(content: DjangoFile) -> bytes:
    content.seek(0)
    head = content.read(8)
    content.seek(0)
    return bytes(head)


def _check_training_upload(name: str, content: DjangoFile) -> None:
    """Refuse, before storing anything, training files that can't be JSONL at all."""
    ext = posixpath.splitext(name)[1].lower()
    if ext in SPREADSHEET_EXTENSIONS:
        raise ApiError(
            f"{SPREADSHEET_EXTENSIONS[ext]} files can't be used for fine-tuning directly: upload "
            "JSONL (one JSON object per line). The upload page converts spreadsheets, and so "
            "does `python manage.py prepare_data -f FILE`.",
            param="file",
            code="invalid_file_format",
        )
    head = _head(content)
    for signature, kind in BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise ApiError(
                f"The file is {kind}, not JSONL. Fine-tuning needs a JSONL file: one JSON "
                "object per line.",
                param="file",
                code="invalid_file_format",
            )


def file_create(
    *,
    organization: Organization,
    uploaded_by: User | None,
    filename: str,
    purpose: str,
    content: DjangoFile | bytes,
    derived_from: File | None = None,
) -> File:
    """Store an upload and create its File; training files are then validated by a worker.

    Raises ApiError: 400 for a bad purpose, name or format (param `purpose` / `file`), 413 over
    settings.MAX_UPLOAD_BYTES. On any failure nothing is left behind: no row and no blob.
    """
    if purpose not in PURPOSES:
        raise ApiError(
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
        raise ApiError("The file is empty.", param="file")
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
        for stored in {file.blob.name, blob_name} - {None, ""}:
            if storage.exists(stored):
                storage.delete(stored)
        raise
    return file


def unfinished_jobs_using(file: File) -> list[str]:
    uses = Q(training_file=file) | Q(validation_file=file) | Q(result_file=file)
    jobs = FineTuneJob.objects.filter(uses, status__in=FineTuneJob.UNFINISHED)
    return list(jobs.values_list("public_id", flat=True)[:5])


def file_delete(*, file: File) -> None:
    """Delete the row, then (after commit) its blob. Refused while an unfinished job uses it."""
    running = unfinished_jobs_using(file)
    if running:
        raise ApiError(
            f"File {file.public_id} is in use by fine-tune job {', '.join(running)}, which has "
            "not finished. Cancel the job or wait for it to finish, then delete the file.",
            param="id",
        )
    blob_name = file.blob.name
    storage = file.blob.storage
    try:
        with transaction.atomic():
            file.delete()
    except ProtectedError as exc:
        # Finished jobs still point at their training files (jobs.FineTuneJob, on_delete=PROTECT).
        ids = sorted({getattr(o, "public_id", str(o.pk)) for o in exc.protected_objects})[:5]
        raise ApiError(
            f"File {file.public_id} can't be deleted: fine-tune job {', '.join(ids)} refers to it.",
            param="id",
        ) from None
    # Only once the row is surely gone: a rolled-back delete must not lose the data.
    if blob_name:
        transaction.on_commit(partial(_delete_blob, storage, blob_name))


def _delete_blob(storage: object, name: str) -> None:
    try:
        storage.delete(name)  # type: ignore[attr-defined]
    except OSError:
        logger.exception("Could not delete blob %s; it is orphaned", name)


def file_open(*, file: File) -> IO[bytes]:
    """The stored bytes, for download. ApiError 404 if the blob has gone missing."""
    try:
        return file.blob.open("rb")
    except FileNotFoundError:
        raise ApiError(
            f"The content of {file.public_id} is no longer available.", status=404, param="id"
        ) from None
