"""Worker-side validation of uploaded training files (the `datasets.validate_file` task).

`file_validate` streams the stored blob once through `datasets.validation` (the checks and
statistics, which need no Django) and records the outcome on the File; then `file_analyse`
stores the prepare-data findings (`datasets.prepare`) the dataset page shows, so that no page
has to compute them on request.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings

from datasets import prepare, readers
from datasets.models import File
from datasets.tokens import TokenCounter
from datasets.validation import DEFAULT_MAX_LINE_BYTES, Report, analyse_stream

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
    from models_app.selectors import base_model_find

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
    nothing. There is deliberately no intermediate "validating" state: a worker killed mid-file
    leaves the row `uploaded`, and the broker's redelivery validates it again.
    """
    file = File.objects.filter(pk=file_id, status=File.Status.UPLOADED).first()
    if file is None:
        logger.info("File %s is not waiting for validation; skipping", file_id)
        return
    if file.purpose != File.Purpose.FINE_TUNE:
        _finish(file_id, status=File.Status.PROCESSED, details=None, report=None)
        return
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
        return {"unavailable": f"Could not analyse this file: {getattr(exc, 'message', exc)}"}
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
