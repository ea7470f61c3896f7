"""Worker-side use cases for the model registry (run by models_app.tasks on the default queue)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from common import artifacts
from common.redact import redact
from common.transient import Renewer
from models_app import files
from models_app.models import FineTunedModel, ModelExport

logger = logging.getLogger(__name__)


def _zip_dir(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=str(path.relative_to(source)))
    # Readers see either no zip or a complete one.
    partial.replace(target)


def _lease_until() -> datetime:
    return timezone.now() + timedelta(seconds=settings.TUNERY_LEASE_SECONDS)


def _claimable(now: datetime) -> Q:
    # Queued, or running under a lease that expired: its worker died.
    return Q(status=ModelExport.Status.PENDING) | Q(
        status=ModelExport.Status.RUNNING, lease_until__lt=now
    )


def model_export_merged(*, model_id: int) -> None:
    """Merge a LoRA fine-tune into its base and zip it as exports/<id>/merged.zip.

    Idempotent: the export's row is claimed with one conditional UPDATE (pending, or running
    under an expired lease), so a duplicate delivery while one export runs does nothing and a
    finished export is not redone. The lease is renewed while the merge runs; every write of
    this try is guarded by its attempt number.
    """
    import engine.merge

    model = (
        FineTunedModel.objects.select_related("base")
        .filter(pk=model_id, deleted_at=None, method=FineTunedModel.Method.LORA)
        .first()
    )
    if model is None:
        return
    folder = files.exports_dir(model)
    now = timezone.now()
    row, _ = ModelExport.objects.get_or_create(model=model, defaults={"updated_at": now})
    if files.merged_zip_exists(model) is not None:
        ModelExport.objects.filter(pk=row.pk).update(status=ModelExport.Status.READY)
        return
    if not ModelExport.objects.filter(_claimable(now), pk=row.pk).update(
        status=ModelExport.Status.RUNNING,
        attempts=F("attempts") + 1,
        lease_until=_lease_until(),
        updated_at=now,
    ):
        logger.info("export of model %s is already running or done", model_id)
        return
    row.refresh_from_db()
    mine = ModelExport.objects.filter(
        pk=row.pk, status=ModelExport.Status.RUNNING, attempts=row.attempts
    )
    if row.attempts > settings.TUNERY_WORK_MAX_TRIES:
        mine.update(
            status=ModelExport.Status.FAILED,
            error=f"The export did not finish after {row.attempts - 1} tries: its worker was "
            "lost each time (it may have run out of memory).",
        )
        return
    folder.mkdir(parents=True, exist_ok=True)
    renewer = Renewer(
        lambda: bool(mine.update(lease_until=_lease_until())),
        settings.TUNERY_LEASE_SECONDS / 3,
        f"export-{model_id}",
    )
    try:
        with renewer:
            adapter = files.adapter_dir(model)
            if adapter is None:
                raise FileNotFoundError(f"no adapter for {model.name}")
            with tempfile.TemporaryDirectory(dir=folder) as work:
                merged = Path(work) / "merged"
                engine.merge.merge_adapter(files.base_model_dir(model.base), adapter, merged)
                _zip_dir(merged, folder / "merged.zip")
            # A remote store: the web host (any host) downloads it from there.
            artifacts.publish_file(folder / "merged.zip")
        mine.update(status=ModelExport.Status.READY, error="", lease_until=None)
    except Exception as exc:
        # A failed export is shown on the model page, and may be retried from there.
        logger.exception("export of model %s failed", model_id)
        mine.update(
            status=ModelExport.Status.FAILED,
            error=redact(f"{type(exc).__name__}: {exc}"),  # shown on the model page: no paths
            lease_until=None,
        )
    finally:
        if not FineTunedModel.objects.filter(pk=model_id, deleted_at=None).exists():
            # Deleted while exporting: leave nothing behind.
            shutil.rmtree(folder, ignore_errors=True)
            artifacts.delete_tree(files.exports_key(model))


def exports_sweep() -> list[int]:
    """Beat task: exports whose worker died (lease expired) or whose message was lost (pending
    for a lease period). Returns the model ids to send again; one out of tries fails."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.TUNERY_LEASE_SECONDS)
    again: list[int] = []
    lost = ModelExport.objects.filter(status=ModelExport.Status.RUNNING, lease_until__lt=now)
    forgotten = ModelExport.objects.filter(status=ModelExport.Status.PENDING, updated_at__lt=stale)
    for row in lost | forgotten:
        current = ModelExport.objects.filter(
            pk=row.pk, status=row.status, attempts=row.attempts, updated_at=row.updated_at
        )
        if row.status == ModelExport.Status.RUNNING and row.attempts >= (
            settings.TUNERY_WORK_MAX_TRIES
        ):
            current.update(
                status=ModelExport.Status.FAILED,
                error=f"The export did not finish after {row.attempts} tries: its worker was "
                "lost each time (it may have run out of memory).",
                lease_until=None,
            )
        elif current.update(status=ModelExport.Status.PENDING, updated_at=now):
            logger.warning("export of model %s lost its worker; sending it again", row.model_id)
            again.append(row.model_id)
    return again
