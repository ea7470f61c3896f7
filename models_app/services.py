"""Write use cases and name resolution for the model registry.

`model_resolve` is the one place a model name becomes weights: a base model (by name or
alias) or an org's live fine-tune, with the directories to load. Inference, the playground and
continued training all go through it, so a deleted model stops resolving everywhere at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import time
import zipfile
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization
from config.api import ApiError
from models_app import selectors
from models_app.models import BaseModel, FineTunedModel, UsageRecord

logger = logging.getLogger(__name__)


class ModelNotFound(ApiError):
    """OpenAI's 404 for an unknown model (or another org's: never leak existence)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            param="model",
            code="model_not_found",
        )
        self.name = name


# --- where the weights are ------------------------------------------------------------------


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
    root = Path(model.artifact_dir)
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


@dataclass(frozen=True)
class Resolved:
    """A model name resolved for an org: the base, and the fine-tune's adapter if any.

    `base_dir` is the directory to load as the base: the base model's own, or for a full
    fine-tune its weights (which replace the base). It is computed on first use, because
    resolving a GGUF source means dequantizing it once.
    """

    base: BaseModel
    adapter_dir: Path | None
    fine_tuned: FineTunedModel | None

    @property
    def name(self) -> str:
        return self.fine_tuned.name if self.fine_tuned is not None else self.base.name

    @property
    def is_full_fine_tune(self) -> bool:
        return self.fine_tuned is not None and self.fine_tuned.method == FineTunedModel.Method.FULL

    @property
    def base_dir(self) -> Path:
        if self.fine_tuned is not None and self.is_full_fine_tune:
            weights = weights_dir(self.fine_tuned)
            if weights is None:
                raise ModelNotFound(self.fine_tuned.name)
            return weights
        return base_model_dir(self.base)


def model_resolve(organization: Organization, name: str) -> Resolved:
    """The org's live fine-tune or a base model (by name or alias); ModelNotFound otherwise."""
    fine_tune = selectors.model_find_for_org(organization=organization, name=name)
    if fine_tune is not None:
        adapter = adapter_dir(fine_tune)
        if fine_tune.method == FineTunedModel.Method.LORA and adapter is None:
            # The row outlived its files (e.g. a half-finished delete): it cannot serve.
            logger.warning("fine-tune %s has no adapter under %s", name, fine_tune.artifact_dir)
            raise ModelNotFound(name)
        return Resolved(base=fine_tune.base, adapter_dir=adapter, fine_tuned=fine_tune)
    base = selectors.base_model_find(name=name)
    if base is None:
        raise ModelNotFound(name)
    return Resolved(base=base, adapter_dir=None, fine_tuned=None)


# --- base model registration ----------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    context_length: int | None
    has_chat_template: bool | None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def base_model_inspect_source(source: str) -> SourceInfo:
    """Check that `source` exists and read what it says about itself, without loading it.

    A Hugging Face directory (config.json), a .gguf file, or `package:NAME` for an installed
    package that ships one. ValidationError({"source": ...}) otherwise.
    """
    if source.startswith("package:"):
        package = source.removeprefix("package:")
        if not package or importlib.util.find_spec(package) is None:
            raise ValidationError({"source": f"No installed package named {package!r}."})
        return SourceInfo(None, None)
    path = Path(source).expanduser()
    if not path.is_absolute():
        raise ValidationError({"source": "Give an absolute path (or package:NAME)."})
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ValidationError({"source": f"No GGUF file at {path}."})
        return _inspect_gguf(path)
    if not (path / "config.json").is_file():
        raise ValidationError(
            {"source": f"{path} is not a Hugging Face model directory (no config.json)."}
        )
    config = _read_json(path / "config.json")
    context = config.get("max_position_embeddings")
    tokenizer_config = _read_json(path / "tokenizer_config.json")
    chat = bool(tokenizer_config.get("chat_template")) or (path / "chat_template.jinja").is_file()
    return SourceInfo(context if isinstance(context, int) else None, chat)


def _inspect_gguf(path: Path) -> SourceInfo:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises plain ValueErrors and struct errors on bad files
        raise ValidationError({"source": f"{path} is not a readable GGUF file: {exc}"}) from None
    context: int | None = None
    chat = False
    for key, field in reader.fields.items():
        if key.endswith(".context_length"):
            context = int(field.contents())
        elif key == "tokenizer.chat_template":
            chat = True
    return SourceInfo(context, chat)


def _taken_names(exclude: BaseModel | None) -> set[str]:
    taken: set[str] = set()
    for base in BaseModel.objects.exclude(pk=exclude.pk if exclude else None):
        taken.add(base.name)
        taken.update(base.aliases or [])
    return taken


def base_model_validate_names(
    *, name: str, aliases: list[str], instance: BaseModel | None = None
) -> None:
    if not name or any(c.isspace() for c in name):
        raise ValidationError({"name": "A model name needs characters and no spaces."})
    taken = _taken_names(instance)
    if name in taken:
        raise ValidationError({"name": f"{name!r} is already a base model name or alias."})
    for alias in aliases:
        if not alias or any(c.isspace() for c in alias):
            raise ValidationError({"aliases": f"Bad alias {alias!r}."})
        if alias in taken or alias == name:
            raise ValidationError({"aliases": f"{alias!r} is already taken."})
    if FineTunedModel.objects.filter(name__in=[name, *aliases]).exists():
        raise ValidationError({"name": "That name belongs to a fine-tuned model."})


def base_model_register(
    *,
    name: str,
    source: str,
    display_name: str = "",
    aliases: list[str] | None = None,
    context_length: int | None = None,
    has_chat_template: bool | None = None,
    base_lr_lora: float | None = None,
    base_lr_full: float | None = None,
    price_train_per_1k: Decimal | float = 0,
    price_generate_per_1k: Decimal | float = 0,
    by_user: User | None = None,
) -> BaseModel:
    """Register a base model from a HF directory, a GGUF path or `package:NAME`.

    Only superusers and organization owners may (base models are shared by every org).
    Unset context length and chat template are read from the source.
    """
    if by_user is not None and not (
        by_user.is_superuser
        or Membership.objects.filter(user=by_user, role=Membership.Role.OWNER).exists()
    ):
        raise PermissionDenied("Only superusers and organization owners may register base models.")
    aliases = [a.strip() for a in (aliases or []) if a.strip()]
    base_model_validate_names(name=name, aliases=aliases)
    info = base_model_inspect_source(source)
    prices = {}
    for field, value in (
        ("price_train_per_1k", price_train_per_1k),
        ("price_generate_per_1k", price_generate_per_1k),
    ):
        try:
            prices[field] = Decimal(str(value))
        except InvalidOperation:
            raise ValidationError({field: f"Not a number: {value!r}."}) from None
        if prices[field] < 0:
            raise ValidationError({field: "Prices cannot be negative."})
    for field, lr in (("base_lr_lora", base_lr_lora), ("base_lr_full", base_lr_full)):
        if lr is not None and not 0 < lr < 1:
            raise ValidationError({field: "A learning rate must be between 0 and 1."})
    return BaseModel.objects.create(
        name=name,
        display_name=display_name or name,
        source=source,
        aliases=aliases,
        context_length=context_length or info.context_length or 2048,
        has_chat_template=(
            has_chat_template if has_chat_template is not None else bool(info.has_chat_template)
        ),
        base_lr_lora=base_lr_lora,
        base_lr_full=base_lr_full,
        **prices,
    )


# --- deletion -------------------------------------------------------------------------------


def _models_root() -> Path:
    return (Path(settings.DATA_DIR) / "models").resolve()


def exports_dir(model: FineTunedModel) -> Path:
    # The name's hash too: a reused primary key (SQLite can reuse the highest one) must never
    # pick up another model's export.
    digest = hashlib.sha1(model.name.encode()).hexdigest()[:10]
    return Path(settings.DATA_DIR) / "exports" / f"{model.pk}-{digest}"


def _remove_files(model: FineTunedModel, adapter: Path | None) -> None:
    from playground.backends import get_backend

    if adapter is not None:
        # Free the adapter in this process's pool (or the remote server) right away.
        get_backend().unload_adapter(name=model.name, adapter_dir=adapter)
    root = artifact_root(model).resolve()
    # Never delete outside DATA_DIR/models, whatever a row says.
    if root.is_relative_to(_models_root()) and root != _models_root():
        shutil.rmtree(root, ignore_errors=True)
    else:
        logger.warning("not deleting %s: outside %s", root, _models_root())
    shutil.rmtree(exports_dir(model), ignore_errors=True)
    if model.job is not None:
        from jobs.runner import job_dir

        # The engine's own output, which the runner copied into artifact_dir: same weights.
        shutil.rmtree(job_dir(model.job) / "work" / "model", ignore_errors=True)


def model_delete(*, model: FineTunedModel | BaseModel, by_role: str) -> dict[str, Any]:
    """Delete a fine-tune: owners only; base models are refused.

    The row is marked deleted (so the name stops resolving at once, in every process), then
    after commit the adapter is unloaded and the files removed. Returns OpenAI's response.
    """
    if isinstance(model, BaseModel):
        raise ValidationError({"model": f"{model.name} is a base model and cannot be deleted."})
    if by_role != Membership.Role.OWNER:
        raise PermissionDenied("Only an owner of the organization may delete a model.")
    adapter = adapter_dir(model)
    deleted = FineTunedModel.objects.filter(pk=model.pk, deleted_at=None).update(
        deleted_at=timezone.now()
    )
    if not deleted:
        raise ModelNotFound(model.name)
    transaction.on_commit(lambda: _remove_files(model, adapter))
    return {"id": model.name, "object": "model", "deleted": True}


# --- usage ----------------------------------------------------------------------------------


def usage_record(
    *,
    organization: Organization,
    model_name: str,
    api_key: ApiKey | None,
    user: User | None,
    prompt_tokens: int,
    completion_tokens: int,
    day: date | None = None,
) -> None:
    """Add one request's tokens to today's row for (org, model, key, user), atomically.

    An UPDATE with F() first (the common case, no read-modify-write race); the first request
    of the day creates the row, and a concurrent creator's IntegrityError falls back to the
    UPDATE.
    """
    lookup = {
        "organization": organization,
        "model_name": model_name,
        "api_key": api_key,
        "user": user if user is not None and user.is_authenticated else None,
        "day": day or timezone.now().date(),
    }
    increments = {
        "requests": F("requests") + 1,
        "prompt_tokens": F("prompt_tokens") + prompt_tokens,
        "completion_tokens": F("completion_tokens") + completion_tokens,
    }
    if UsageRecord.objects.filter(**lookup).update(**increments):
        return
    try:
        with transaction.atomic():
            UsageRecord.objects.create(
                **lookup,
                requests=1,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
            )
    except IntegrityError:
        UsageRecord.objects.filter(**lookup).update(**increments)


# --- downloads and the merged export --------------------------------------------------------


def adapter_zip(*, model: FineTunedModel, into: Path | BinaryIO) -> None:
    """Zip the adapter's safetensors and JSON configs (or a full fine-tune's weights)."""
    source = adapter_dir(model) or weights_dir(model)
    if source is None:
        raise ModelNotFound(model.name)
    wanted = {".safetensors", ".json", ".jinja", ".model", ".txt"}
    with zipfile.ZipFile(into, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.suffix in wanted:
                archive.write(path, arcname=path.name)


# A worker killed mid-export leaves its marker; after this long a new export may start.
EXPORT_STALE_SECONDS = 3600


def export_state(model: FineTunedModel) -> dict[str, Any]:
    """{"status": none | pending | running | ready | failed, "error": str | None}."""
    folder = exports_dir(model)
    if (folder / "merged.zip").is_file():
        return {"status": "ready", "error": None, "bytes": (folder / "merged.zip").stat().st_size}
    for marker in ("running", "pending"):
        path = folder / marker
        if path.is_file() and time.time() - path.stat().st_mtime < EXPORT_STALE_SECONDS:
            return {"status": marker, "error": None}
    if (folder / "error.txt").is_file():
        return {"status": "failed", "error": (folder / "error.txt").read_text()[:500]}
    return {"status": "none", "error": None}


def model_export_start(*, model: FineTunedModel) -> bool:
    """Queue the merged-model export; False if one is already queued, running or done."""
    if model.method != FineTunedModel.Method.LORA:
        raise ValidationError({"model": "Only LoRA fine-tunes need merging."})
    if export_state(model)["status"] in ("pending", "running", "ready"):
        return False
    folder = exports_dir(model)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "error.txt").unlink(missing_ok=True)
    (folder / "pending").write_text(str(time.time()))
    from models_app import tasks

    transaction.on_commit(lambda: tasks.export_merged_model.delay(model.pk))
    return True
