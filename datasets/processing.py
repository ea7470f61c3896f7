"""Worker-side validation of uploaded training files (the `datasets.validate_file` task).

`file_validate` streams the stored blob once through `datasets.validation` (the checks and
statistics, which need no Django) and records the outcome on the File; then `file_analyse`
stores the prepare-data findings (`datasets.prepare`) the dataset page shows, so that no page
has to compute them on request.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import IO, Any

from django.conf import settings
from django.core.files.base import File as DjangoFile
from django.db.models import F
from django.utils import timezone

from accounts.models import Organization
from common.redact import redact
from common.transient import Renewer
from datasets import prepare, readers
from datasets.models import File
from datasets.tokens import TokenCounter
from datasets.validation import DEFAULT_MAX_LINE_BYTES, Report, analyse_stream
from models_app.selectors import base_model_find

logger = logging.getLogger(__name__)

# The prepare-data analysis holds every row in memory (its fixes work across rows); past this
# size the page points to `manage.py prepare_data`, which runs where the file is.
ANALYZE_MAX_BYTES = 64 * 1024 * 1024

# --- validation --------------------------------------------------------------------------------


def _counter_or_none() -> TokenCounter | None:
    from datasets import tokens

    try:
        return tokens.get_counter()
    except Exception:
        # Validation still runs (and unblocks clients polling for `processed`) without counts.
        logger.exception("Could not load the tokenizer; validating without token counts")
        return None


def default_context_length(counter: TokenCounter | None) -> int:
    """The default base model's context length: the registry's value, else the model's own."""
    base = base_model_find(name=settings.TUNERY_DEFAULT_BASE_MODEL)
    if base is not None and base.context_length:
        return base.context_length
    return counter.context_length if counter is not None else 2048


def max_line_bytes() -> int:
    return int(getattr(settings, "TUNERY_VALIDATION_MAX_LINE_BYTES", DEFAULT_MAX_LINE_BYTES))


def file_validate(*, file_id: int) -> None:
    """Validate an uploaded training file and record the outcome; idempotent.

    Only a file still `uploaded` is validated, and the result is written with an UPDATE guarded
    on that status, so a duplicate or redelivered message either finds nothing to do or writes
    nothing. The status stays `uploaded` while it runs (OpenAI's vocabulary); a lease, renewed
    while it runs, tells the sweeper (`files_sweep_validations`) whether a worker is still on
    it. A worker killed mid-file leaves the lease to expire, and the file is validated again,
    at most TUNERY_WORK_MAX_TRIES times: a file that keeps killing its worker ends in `error`.
    """
    file = _claim(file_id)
    if file is None:
        logger.info("File %s is not waiting for validation; skipping", file_id)
        return
    if file.purpose != File.Purpose.FINE_TUNE:
        _finish(file_id, status=File.Status.PROCESSED, details=None, report=None)
        return
    if file.validation_attempts > settings.TUNERY_WORK_MAX_TRIES:
        _give_up(file_id, file.validation_attempts - 1)
        return
    with Renewer(lambda: _renew(file_id), settings.TUNERY_LEASE_SECONDS / 3, f"validate-{file_id}"):
        _validate(file)


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.TUNERY_LEASE_SECONDS)


def _claim(file_id: int) -> File | None:
    """Count one more try and take the lease; None if the file no longer waits for this."""
    claimed = File.objects.filter(pk=file_id, status=File.Status.UPLOADED).update(
        validation_attempts=F("validation_attempts") + 1, validation_lease_until=_lease_until()
    )
    return File.objects.filter(pk=file_id).first() if claimed else None


def _renew(file_id: int) -> bool:
    return bool(
        File.objects.filter(pk=file_id, status=File.Status.UPLOADED).update(
            validation_lease_until=_lease_until()
        )
    )


def _give_up(file_id: int, tries: int) -> None:
    _finish(
        file_id,
        status=File.Status.ERROR,
        details=f"Validation did not finish after {tries} tries: the worker validating it was "
        "lost each time (it may have run out of memory). Check the default-queue workers' "
        "logs, then upload the file again.",
        report=None,
    )


def files_sweep_validations() -> list[int]:
    """Beat task: files whose validation lease expired (their worker died) or that were never
    picked up. Returns the ids to validate again; a file out of tries fails instead."""
    now = timezone.now()
    waiting = File.objects.filter(status=File.Status.UPLOADED)
    expired = waiting.filter(validation_lease_until__lt=now)
    # Never picked up (the message was lost, e.g. the broker was down at upload time).
    forgotten = waiting.filter(
        validation_lease_until=None,
        created_at__lt=now - timedelta(seconds=settings.TUNERY_LEASE_SECONDS),
    )
    again: list[int] = []
    for file in (expired | forgotten).only("pk", "validation_attempts", "validation_lease_until"):
        if file.validation_attempts >= settings.TUNERY_WORK_MAX_TRIES:
            _give_up(file.pk, file.validation_attempts)
            continue
        # Reserve it for one lease period, so the next sweeps don't send it again meanwhile.
        if File.objects.filter(
            pk=file.pk,
            status=File.Status.UPLOADED,
            validation_lease_until=file.validation_lease_until,
        ).update(validation_lease_until=_lease_until()):
            logger.warning("File %s: validation lost its worker; sending it again", file.pk)
            again.append(file.pk)
    return again


def _validate(file: File) -> None:
    file_id = file.pk
    counter = _counter_or_none()
    try:
        with file.blob.open("rb") as stream:
            report = analyse_stream(
                stream.read,
                counter=counter,
                context_length=default_context_length(counter),
                max_errors=settings.TUNERY_VALIDATION_MAX_ERRORS,
                max_line_bytes=max_line_bytes(),
            )
    except FileNotFoundError:
        logger.error("The blob of %s is missing", file.public_id)
        _finish(
            file_id, status=File.Status.ERROR, details="The stored file is missing.", report=None
        )
        return
    except Exception:
        # A bug, not the user's data: fail the file visibly rather than leave clients polling.
        logger.exception("Validating %s failed", file.public_id)
        _finish(
            file_id,
            status=File.Status.ERROR,
            details="Validation failed unexpectedly; please upload the file again.",
            report=None,
        )
        raise
    status = File.Status.PROCESSED if report.ok else File.Status.ERROR
    if _finish(file_id, status=status, details=report.summary(), report=report):
        # Then the findings, so that no page has to compute them; a client polling for
        # `processed` needn't wait for them.
        file_analyse(file_id=file_id)


def _finish(file_id: int, *, status: str, details: str | None, report: Report | None) -> bool:
    fields: dict[str, Any] = {"status": status, "status_details": details}
    if report is not None:
        fields |= {
            "format": report.format,
            "stats": report.stats,
            "errors": report.errors,
            "error_count": report.error_count,
        }
    elif status == File.Status.ERROR:
        fields["error_count"] = 1
    return bool(File.objects.filter(pk=file_id, status=File.Status.UPLOADED).update(**fields))


# --- the prepare-data findings -----------------------------------------------------------------


def load_analysis(file: File) -> prepare.Analysis:
    """The prepare-data analysis of a stored training file. Raises ReadError or OSError."""
    with file.blob.open("rb") as fh:
        return prepare.analyze(readers.read_jsonl_lenient(fh))


def findings_of(file: File) -> dict[str, Any]:
    """What File.findings stores: Analysis.to_json(), or {"unavailable": why} if it can't be
    computed here (the page shows why)."""
    if file.bytes > ANALYZE_MAX_BYTES:
        return {
            "unavailable": f"This file is too large to analyse here (over "
            f"{ANALYZE_MAX_BYTES // 2**20} MiB). Download it and run "
            "`python manage.py prepare_data -f FILE` on it."
        }
    try:
        return load_analysis(file).to_json()
    except (readers.ReadError, OSError) as exc:
        logger.warning("Could not analyse %s: %s", file.public_id, exc)
        reason = redact(str(getattr(exc, "message", exc)))
        return {"unavailable": f"Could not analyse this file: {reason}"}
    except Exception:
        # A bug in the analysis must not fail the validation task or, later, the page.
        logger.exception("Analysing %s failed", file.public_id)
        return {"unavailable": "The analysis failed unexpectedly."}


def file_analyse(*, file_id: int) -> None:
    """Store the prepare-data findings of a validated training file; idempotent.

    Runs in the validation task, after validation. Two runs at once (the task and a page
    reading a file validated before findings were stored) write the same thing.
    """
    file = (
        File.objects.filter(
            pk=file_id,
            purpose=File.Purpose.FINE_TUNE,
            status__in=(File.Status.PROCESSED, File.Status.ERROR),
            deleted_at__isnull=True,
        )
        .defer("stats", "errors")
        .first()
    )
    if file is None or file.findings:
        return
    findings = findings_of(file)
    File.objects.filter(pk=file_id, deleted_at__isnull=True).update(findings=findings)


# --- results files -----------------------------------------------------------------------------


def results_file_create(*, organization: Organization, content: IO[bytes], filename: str) -> File:
    """Store a job's results file, written by its runner: `processed` at once, with nothing to
    validate (clients may not upload this purpose). The blob is deleted again if the row is not
    saved; `content` is streamed, never read whole."""
    upload = DjangoFile(content, name=filename)
    file = File(
        organization=organization,
        uploaded_by=None,
        filename=filename,
        purpose=File.Purpose.FINE_TUNE_RESULTS,
        status=File.Status.PROCESSED,
        format=File.Format.RESULTS,
        bytes=upload.size,
    )
    file.blob.save(filename, upload, save=False)
    stored = str(file.blob.name)
    try:
        file.save()
    except BaseException:
        file.blob.storage.delete(stored)
        raise
    return file
