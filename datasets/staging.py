"""Table uploads (CSV, TSV, XLSX, ...) waiting for their column mapping.

A leaf module (the default storage only): the upload pages keep and discard them, and beat's
`datasets.sweep_staging` task removes what nobody mapped.
"""

from __future__ import annotations

import logging
import secrets
from datetime import timedelta
from pathlib import Path

from django.core.files import File as DjangoFile
from django.core.files.storage import default_storage
from django.utils import timezone

from accounts.models import Organization

logger = logging.getLogger(__name__)

STAGING_DIR = "staging"


def staging_save(*, organization: Organization, upload: DjangoFile[bytes]) -> str:
    """Keep a table upload until its columns are mapped; returns its storage path.

    The blob goes through the default storage (shared by every web process, S3 in production)
    under a random name: the user's filename never becomes a path. `staging_sweep` removes
    what is never mapped.
    """
    token = secrets.token_urlsafe(16)
    upload.seek(0)
    return default_storage.save(f"{STAGING_DIR}/{organization.pk}/{token}", upload)


def staging_discard(path: str) -> None:
    try:
        default_storage.delete(path)
    except OSError:
        logger.warning("Could not delete the staged upload %s", path)


def staging_sweep(*, max_age_seconds: int) -> int:
    """Delete staged uploads older than `max_age_seconds`: those nobody mapped. Returns how many.

    Whoever abandons the mapping step (closes the tab, lets the session expire) leaves the
    upload behind; the session that knew it may be gone, so age is the only test. A page that
    still refers to a swept upload says it has expired.
    """
    cutoff = timezone.now() - timedelta(seconds=max_age_seconds)
    removed = 0
    try:
        orgs, _ = default_storage.listdir(STAGING_DIR)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for org in orgs:
        folder = f"{STAGING_DIR}/{org}"
        _, names = default_storage.listdir(folder)
        for name in names:
            path = f"{folder}/{name}"
            try:
                stale = default_storage.get_modified_time(path) < cutoff
            except (FileNotFoundError, NotImplementedError):
                continue  # removed meanwhile, or a storage that can't tell: leave it
            if stale:
                staging_discard(path)
                removed += 1
        _remove_empty_folder(folder)
    return removed


def _remove_empty_folder(folder: str) -> None:
    """Local storage keeps empty folders (object stores have none): remove the org's folder."""
    try:
        local = Path(default_storage.path(folder))
    except NotImplementedError:
        return
    try:
        local.rmdir()  # only if empty
    except OSError:
        pass
