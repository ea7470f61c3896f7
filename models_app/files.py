"""Where a model's files are: the base's weights, a fine-tune's adapter or weights, and where
the exports built for download are (models, checkpoints, CSVs of datasets). A leaf module (models, settings, the artifact store): the web side (services, views)
and the worker side (processing, retention) both find files through it, so neither imports
the other.
"""

from __future__ import annotations

import hashlib
import shutil
from functools import lru_cache
from pathlib import Path
from typing import IO

from django.conf import settings

from common import artifacts
from datasets.models import File
from jobs.models import Checkpoint
from models_app.models import BaseModel, Export, FineTunedModel


@lru_cache(maxsize=64)
def _resolve_source(source: str, cache_dir: str) -> Path:
    from engine.models import resolve_model_source

    return Path(resolve_model_source(source, cache_dir))


def resolve_source(source: str) -> Path:
    """A model source's Hugging Face directory. A GGUF or package source is dequantized once
    into TUNERY_MODEL_CACHE_DIR by the engine; the answer is cached for the process."""
    return _resolve_source(source, str(settings.TUNERY_MODEL_CACHE_DIR))


def base_model_dir(base: BaseModel) -> Path:
    return resolve_source(base.source)


def artifact_root(model: FineTunedModel) -> Path:
    """The model's files on this host: under DATA_DIR, or (a remote artifact store, where
    `artifact_dir` is the model's key) this host's cached copy, fetched once. A model whose
    objects are gone answers a path that does not exist."""
    root = Path(model.artifact_dir)
    if artifacts.is_remote() and not root.is_absolute():
        try:
            return artifacts.local_path(root)
        except FileNotFoundError:
            return Path(settings.DATA_DIR) / root
    return root if root.is_absolute() else Path(settings.DATA_DIR) / root


def _first_dir_with(root: Path, marker: str, subdirs: tuple[str, ...]) -> Path | None:
    for candidate in (root, *(root / s for s in subdirs)):
        if (candidate / marker).is_file():
            return candidate
    return None


def adapter_dir(model: FineTunedModel) -> Path | None:
    """A LoRA fine-tune's PEFT adapter directory (the artifact dir itself or its `adapter/`)."""
    if model.method != FineTunedModel.Method.LORA:
        return None
    return _first_dir_with(artifact_root(model), "adapter_config.json", ("adapter", "final"))


def weights_dir(model: FineTunedModel) -> Path | None:
    """A full fine-tune's model directory (with config.json)."""
    if model.method != FineTunedModel.Method.FULL:
        return None
    return _first_dir_with(artifact_root(model), "config.json", ("model", "final"))


def exports_key(model: FineTunedModel) -> str:
    # The name's hash too: a reused primary key (SQLite can reuse the highest one) must never
    # pick up another model's export.
    digest = hashlib.sha1(model.name.encode()).hexdigest()[:10]
    return f"exports/{model.pk}-{digest}"


def exports_dir(model: FineTunedModel) -> Path:
    return Path(settings.DATA_DIR) / exports_key(model)


# What each kind of export is called in its folder.
EXPORT_NAMES = {
    Export.Kind.MERGED: "merged.zip",
    Export.Kind.MODEL_FILES: "files.zip",
    Export.Kind.CHECKPOINT: "checkpoint.zip",
    Export.Kind.CSV: "export.csv",
}

Subject = FineTunedModel | Checkpoint | File


def export_subject(export: Export) -> Subject:
    subject = export.model or export.checkpoint or export.file
    assert subject is not None  # the row's check constraint: exactly one
    return subject


def export_folder_key(subject: Subject) -> str:
    """The folder of a subject's exports: a model's (shared with its merged export, which
    predates the others), or its public id, random and never reused."""
    if isinstance(subject, FineTunedModel):
        return exports_key(subject)
    return f"exports/{subject.public_id}"


def export_key(kind: str, subject: Subject) -> str:
    return f"{export_folder_key(subject)}/{EXPORT_NAMES[Export.Kind(kind)]}"


def export_path(kind: str, subject: Subject) -> Path:
    return Path(settings.DATA_DIR) / export_key(kind, subject)


def export_size(kind: str, subject: Subject) -> int | None:
    """A built export's size in bytes, or None while there is none (on this host's disk, or in
    a remote store: built on another host). Written by an atomic rename (or upload): a
    whole file or none."""
    built = export_path(kind, subject)
    if built.is_file():
        return built.stat().st_size
    if artifacts.is_remote():
        key = export_key(kind, subject)
        if artifacts.store().exists(key):
            return artifacts.store().size(key)
    return None


def export_open(kind: str, subject: Subject) -> IO[bytes] | None:
    """A built export as a stream (from the store, never read whole), or None."""
    built = export_path(kind, subject)
    if built.is_file():
        return built.open("rb")
    if artifacts.is_remote():
        key = export_key(kind, subject)
        if artifacts.store().exists(key):
            return artifacts.store().open(key)
    return None


def export_remove(kind: str, subject: Subject) -> None:
    """Remove one built export: on this host, and its object in a remote store."""
    export_path(kind, subject).unlink(missing_ok=True)
    if artifacts.is_remote():
        artifacts.store().delete(export_key(kind, subject))


def exports_remove(subject: Subject) -> None:
    """Remove every export of a subject: on this host, and its objects in a remote store."""
    folder = export_folder_key(subject)
    shutil.rmtree(Path(settings.DATA_DIR) / folder, ignore_errors=True)
    artifacts.delete_tree(folder)
