"""Worker-side use cases for the model registry (run by models_app.tasks on the default queue)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from models_app import services
from models_app.models import FineTunedModel

logger = logging.getLogger(__name__)


def _zip_dir(source: Path, target: Path) -> None:
    partial = target.with_suffix(".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, arcname=str(path.relative_to(source)))
    # Readers see either no zip or a complete one.
    partial.replace(target)


def model_export_merged(*, model_id: int) -> None:
    """Merge a LoRA fine-tune into its base and zip it as exports/<id>/merged.zip.

    Idempotent: the `running` marker is created with O_EXCL, so a duplicate delivery while one
    export runs does nothing, and a finished export is not redone.
    """
    import engine.merge

    model = (
        FineTunedModel.objects.select_related("base")
        .filter(pk=model_id, deleted_at=None, method=FineTunedModel.Method.LORA)
        .first()
    )
    if model is None:
        return
    folder = services.exports_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "merged.zip").is_file():
        return
    marker = folder / "running"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        logger.info("export of model %s is already running", model_id)
        return
    (folder / "pending").unlink(missing_ok=True)
    try:
        adapter = services.adapter_dir(model)
        if adapter is None:
            raise FileNotFoundError(f"no adapter under {model.artifact_dir}")
        with tempfile.TemporaryDirectory(dir=folder) as work:
            merged = Path(work) / "merged"
            engine.merge.merge_adapter(services.base_model_dir(model.base), adapter, merged)
            _zip_dir(merged, folder / "merged.zip")
    except Exception as exc:
        # A failed export is shown on the model page, and may be retried from there.
        logger.exception("export of model %s failed", model_id)
        (folder / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
    finally:
        marker.unlink(missing_ok=True)
        if not FineTunedModel.objects.filter(pk=model_id, deleted_at=None).exists():
            # Deleted while exporting: leave nothing behind.
            shutil.rmtree(folder, ignore_errors=True)
