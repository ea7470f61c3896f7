"""Where a model's files are: the base's weights, a fine-tune's adapter or weights, its merged
export. A leaf module (models, settings, the artifact store): the web side (services, views)
and the worker side (processing, retention) both find files through it, so neither imports
the other.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import IO

from django.conf import settings

from common import artifacts
from models_app.models import BaseModel, FineTunedModel


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


def merged_zip_exists(model: FineTunedModel) -> int | None:
    """The merged export's size in bytes, or None while there is none (on this host's disk,
    or in a remote store: exported on another host)."""
    zipped = exports_dir(model) / "merged.zip"
    if zipped.is_file():
        return zipped.stat().st_size
    if artifacts.is_remote():
        key = f"{exports_key(model)}/merged.zip"
        if artifacts.store().exists(key):
            return artifacts.store().size(key)
    return None


def merged_zip_open(model: FineTunedModel) -> IO[bytes] | None:
    """The merged export as a stream (from the store, never read whole), or None."""
    zipped = exports_dir(model) / "merged.zip"
    if zipped.is_file():
        return zipped.open("rb")
    if artifacts.is_remote():
        key = f"{exports_key(model)}/merged.zip"
        if artifacts.store().exists(key):
            return artifacts.store().open(key)
    return None
