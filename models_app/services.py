"""Write use cases and name resolution for the model registry.

`model_resolve` is the one place a model name becomes weights: a base model (by name or
alias) or an org's live fine-tune, with the directories to load. Inference, the playground and
continued training all go through it, so a deleted model stops resolving everywhere at once.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from functools import partial
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.utils import timezone

from accounts.models import ApiKey, Membership, Organization
from common import artifacts
from common.errors import ServiceError
from common.ids import random_id
from common.pagination import cursor_page
from datasets.models import File
from jobs.checkpoints import model_dir_of
from jobs.models import Checkpoint
from models_app import selectors, tasks
from models_app.files import (  # where the files are: shared with the worker side
    Subject,
    adapter_dir,
    artifact_root,
    base_model_dir,
    export_size,
    exports_dir,
    exports_key,
    weights_dir,
)
from models_app.files import export_open as open_built_export
from models_app.models import (
    BaseModel,
    Export,
    FineTunedModel,
    ModelPermission,
    UsageRecord,
)
from playground.backends import get_backend

logger = logging.getLogger(__name__)


class ModelNotFound(ServiceError):
    """OpenAI's 404 for an unknown model (or another org's: never leak existence)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            param="model",
            code="model_not_found",
        )
        self.name = name


@dataclass(frozen=True)
class Resolved:
    """A model name resolved for an org: the base, and the fine-tune's adapter if any.

    `base_dir` is the directory to load as the base: the base model's own, or for a full
    fine-tune its weights (which replace the base). It is computed on first use, because
    resolving a GGUF source means dequantizing it once. A checkpoint (`…:ckpt-step-N`) resolves
    like a fine-tune, to its own adapter or weights.
    """

    base: BaseModel
    adapter_dir: Path | None
    fine_tuned: FineTunedModel | None
    checkpoint: Checkpoint | None = None
    checkpoint_weights: Path | None = None  # a full fine-tune's checkpoint

    @property
    def name(self) -> str:
        if self.checkpoint is not None:
            return self.checkpoint.name
        return self.fine_tuned.name if self.fine_tuned is not None else self.base.name

    @property
    def is_full_fine_tune(self) -> bool:
        if self.checkpoint_weights is not None:
            return True
        return self.fine_tuned is not None and self.fine_tuned.method == FineTunedModel.Method.FULL

    @property
    def base_dir(self) -> Path:
        if self.checkpoint_weights is not None:
            return self.checkpoint_weights
        if self.fine_tuned is not None and self.is_full_fine_tune:
            weights = weights_dir(self.fine_tuned)
            if weights is None:
                raise ModelNotFound(self.fine_tuned.name)
            return weights
        return base_model_dir(self.base)


def model_resolve(organization: Organization, name: str) -> Resolved:
    """The one place a model name becomes weights, for inference and the playground.

    The org's live fine-tune, its own exposed checkpoint, one of those shared with it, or a
    base model (by name or alias); ModelNotFound otherwise.
    """
    usable = selectors.usable_model_find(organization=organization, name=name)
    if usable is not None and usable.checkpoint is not None:
        return _checkpoint_resolve(usable.checkpoint, name)
    fine_tune = usable.fine_tuned if usable is not None else None
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


def _checkpoint_resolve(checkpoint: Checkpoint, name: str) -> Resolved:
    files = Path(model_dir_of(checkpoint))
    base = checkpoint.job.base_model
    if checkpoint.job.method == FineTunedModel.Method.FULL:
        if not (files / "config.json").is_file():
            raise ModelNotFound(name)  # removed by retention
        return Resolved(base, None, None, checkpoint=checkpoint, checkpoint_weights=files)
    if not (files / "adapter_config.json").is_file():
        raise ModelNotFound(name)
    return Resolved(base, files, None, checkpoint=checkpoint)


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
    bases = BaseModel.objects.all() if exclude is None else BaseModel.objects.exclude(pk=exclude.pk)
    for base in bases:
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


def _remove_files(model: FineTunedModel, adapter: Path | None) -> None:
    if adapter is not None:
        # Free the adapter in this process's pool (or the remote server) right away.
        get_backend().unload_adapter(name=model.name, adapter_dir=adapter)
    stored = Path(model.artifact_dir)
    if artifacts.is_remote() and not stored.is_absolute():
        # The model's objects in the store, and this host's cached copy; the key is checked
        # like a path: never anything outside models/.
        if stored.parts[:1] == ("models",) and len(stored.parts) > 2 and ".." not in stored.parts:
            artifacts.delete_tree(stored.as_posix())
        root = (Path(settings.DATA_DIR) / stored).resolve()
    else:
        root = artifact_root(model).resolve()
    # Never delete outside DATA_DIR/models, whatever a row says.
    if root.is_relative_to(_models_root()) and root != _models_root():
        shutil.rmtree(root, ignore_errors=True)
    else:
        logger.warning("not deleting %s: outside %s", root, _models_root())
    shutil.rmtree(exports_dir(model), ignore_errors=True)
    artifacts.delete_tree(exports_key(model))
    if model.job is not None:
        from jobs import paths

        # The engine's own output, which the runner copied into artifact_dir: same weights.
        # (Normally gone once the job succeeded; the per-epoch checkpoints are the job's
        # own objects and stay, as OpenAI keeps them.)
        for work in paths.attempt_dirs(model.job):
            shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(paths.job_dir(model.job) / "work", ignore_errors=True)  # older layout


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
    kind: str = UsageRecord.Kind.REQUESTS,
) -> None:
    """Add one request's tokens to today's row for (org, model, key, user, kind), atomically.

    An UPDATE with F() first (the common case, no read-modify-write race); the first request
    of the day creates the row, and a concurrent creator's IntegrityError falls back to the
    UPDATE.
    """
    lookup = {
        "organization": organization,
        "model_name": model_name,
        "api_key": api_key,
        "user": user if user is not None and user.is_authenticated else None,
        "kind": kind,
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


# --- downloads, built by a worker --------------------------------------------------------


# Whether a subject can be exported as a kind; the reason shown otherwise.
def _exportable(kind: str, subject: Subject) -> str | None:
    if isinstance(subject, FineTunedModel):
        if kind == Export.Kind.MERGED:
            if subject.method != FineTunedModel.Method.LORA:
                return "Only LoRA fine-tunes need merging."
            return None
        if kind == Export.Kind.MODEL_FILES:
            if adapter_dir(subject) or weights_dir(subject):
                return None
            return "The model's files are missing."
    elif isinstance(subject, Checkpoint):
        if kind == Export.Kind.CHECKPOINT:
            return None
    elif kind == Export.Kind.CSV:
        if subject.format != File.Format.PROMPT_COMPLETION:
            return "Only prompt/completion files can be exported as CSV."
        return None
    return f"No {kind} export for this."


def _subject_field(subject: Subject) -> str:
    if isinstance(subject, FineTunedModel):
        return "model"
    return "checkpoint" if isinstance(subject, Checkpoint) else "file"


def _export_row(kind: str, subject: Subject) -> Export | None:
    return Export.objects.filter(kind=kind, **{_subject_field(subject): subject}).first()


def export_state(*, kind: str, subject: Subject) -> dict[str, Any]:
    """{"status": none | pending | running | ready | failed, "error": str | None, "bytes"}.

    A built file is ready whatever its row says (it was published by an atomic rename or an
    upload). A running export whose lease expired lost its worker: it shows as failed (and may
    be started again) until the sweeper sends it again.
    """
    return _state(kind, subject, lambda: _export_row(kind, subject))


def export_states(*, kind: str, subjects: list[Checkpoint]) -> list[dict[str, Any]]:
    """export_state of each of a page's checkpoints, their rows read in one query."""
    if not subjects:
        return []
    rows = {
        row.checkpoint_id: row for row in Export.objects.filter(kind=kind, checkpoint__in=subjects)
    }
    return [_state(kind, s, partial(rows.get, s.pk)) for s in subjects]


def _state(kind: str, subject: Subject, row_of: Callable[[], Export | None]) -> dict[str, Any]:
    size = export_size(kind, subject)
    if size is not None:
        return {"status": "ready", "error": None, "bytes": size}
    row = row_of()
    if row is None or row.status == Export.Status.READY:  # READY but the file was removed
        return {"status": "none", "error": None}
    if row.status == Export.Status.FAILED:
        return {"status": "failed", "error": row.error[:500]}
    if row.status == Export.Status.RUNNING and export_lease_expired(row):
        return {"status": "failed", "error": "The worker preparing it was lost; try again."}
    return {"status": row.status, "error": None}


def export_lease_expired(row: Export) -> bool:
    return row.lease_until is not None and row.lease_until < timezone.now()


def export_start(*, kind: str, subject: Subject) -> bool:
    """Queue the build of a download on the default worker; False if one is already queued,
    running or done (two clicks queue it once). ServiceError if the subject has none."""
    reason = _exportable(kind, subject)
    if reason is not None:
        raise ServiceError(reason, param="kind")
    if export_state(kind=kind, subject=subject)["status"] in ("pending", "running", "ready"):
        return False
    now = timezone.now()
    try:
        with transaction.atomic():
            row, created = Export.objects.get_or_create(
                kind=kind, **{_subject_field(subject): subject}, defaults={"updated_at": now}
            )
    except IntegrityError:  # a concurrent click created it: that one queued the build
        return False
    if not created:
        # Only from failed, done-and-removed, or running with an expired lease (a dead worker).
        restartable = Q(status__in=[Export.Status.FAILED, Export.Status.READY]) | Q(
            status=Export.Status.RUNNING, lease_until__lt=now
        )
        if not Export.objects.filter(restartable, pk=row.pk).update(
            status=Export.Status.PENDING, error="", attempts=0, lease_until=None, updated_at=now
        ):
            return False
    transaction.on_commit(lambda: tasks.build_export.delay(row.pk))
    return True


def export_open(*, kind: str, subject: Subject) -> IO[bytes]:
    """A built export as a stream (this host's disk or the store); 404 until it is built."""
    stream = open_built_export(kind, subject)
    if stream is None:
        raise ServiceError("This download is not ready: prepare it first.", status=404)
    return stream


# --- sharing (OpenAI's checkpoint permissions) ----------------------------------------------


def checkpoint_model_json(checkpoint: Checkpoint) -> dict[str, Any]:
    """A checkpoint as OpenAI's model object (`GET /v1/models/ft:…:ckpt-step-N`)."""
    return {
        "id": checkpoint.name,
        "object": "model",
        "created": int(checkpoint.created_at.timestamp()),
        "owned_by": checkpoint.job.organization.slug,
        "root": checkpoint.job.base_model.name,
        "parent": checkpoint.job.base_model.name,
    }


def permission_json(permission: ModelPermission) -> dict[str, Any]:
    return {
        "object": "checkpoint.permission",
        "id": permission.public_id,
        "created_at": int(permission.created_at.timestamp()),
        # OpenAI grants to projects; Tunery has none, so a project id is an organization id.
        "project_id": permission.grantee.public_id,
    }


def _shareable(organization: Organization, name: str) -> selectors.Usable:
    """The owner's own fine-tune or exposed checkpoint: never one shared with it (re-sharing),
    never another org's (404, as if it did not exist)."""
    usable = selectors.usable_model_find(organization=organization, name=name)
    if usable is None or usable.shared_with(organization):
        raise ServiceError(
            f"The model `{name}` does not exist or you do not have access to it.",
            status=404,
            param="fine_tuned_model_checkpoint",
            code="model_not_found",
        )
    return usable


def _require_owner(by_role: str) -> None:
    if by_role != Membership.Role.OWNER:
        raise PermissionDenied("Only an owner of the organization may manage model sharing.")


def permission_create(
    *, organization: Organization, by_role: str, name: str, project_ids: Any
) -> list[ModelPermission]:
    """Share a fine-tuned model or checkpoint with other organizations of this instance.

    Each id in `project_ids` is an organization id (`org-…`). Granting twice returns the
    existing grant. Every check happens before anything is written.
    """
    _require_owner(by_role)
    usable = _shareable(organization, name)
    if (
        not isinstance(project_ids, list)
        or not project_ids
        or not all(isinstance(p, str) and p for p in project_ids)
    ):
        raise ServiceError(
            "project_ids must be a non-empty list of organization ids.", param="project_ids"
        )
    if len(project_ids) > 100:
        raise ServiceError("project_ids may hold at most 100 ids.", param="project_ids")
    grantees = {o.public_id: o for o in Organization.objects.filter(public_id__in=project_ids)}
    for i, project_id in enumerate(project_ids):
        if project_id not in grantees:
            raise ServiceError(
                f"No such organization: {project_id} (project_ids are organization ids here).",
                param=f"project_ids.{i}",
            )
        if project_id == organization.public_id:
            raise ServiceError(
                "A model is always usable by its own organization.", param=f"project_ids.{i}"
            )
    granted = []
    with transaction.atomic():
        for project_id in dict.fromkeys(project_ids):
            permission, _ = ModelPermission.objects.get_or_create(
                model_name=name,
                grantee=grantees[project_id],
                defaults={
                    "public_id": random_id("cp_", 24),
                    "organization": organization,
                    "fine_tuned_model": usable.fine_tuned,
                    "checkpoint": usable.checkpoint,
                },
            )
            granted.append(permission)
    return granted


def permission_list(
    *,
    organization: Organization,
    by_role: str,
    name: str,
    after: str | None,
    limit: int,
    order: str | None,
    project_id: str | None,
) -> tuple[list[ModelPermission], bool]:
    """A page of the grants on one of the owner's models; newest first unless `ascending`."""
    _require_owner(by_role)
    _shareable(organization, name)
    if order not in (None, "", "ascending", "descending"):
        raise ServiceError("order must be 'ascending' or 'descending'.", param="order")
    grants = selectors.permission_list_for_model(organization=organization, model_name=name)
    if project_id:
        grants = grants.filter(grantee__public_id=project_id)
    grants = grants.order_by(
        *(("created_at", "id") if order == "ascending" else ("-created_at", "-id"))
    )
    return cursor_page(grants, after=after, limit=limit)


def permission_delete(
    *, organization: Organization, by_role: str, name: str, permission_id: str
) -> dict[str, Any]:
    _require_owner(by_role)
    _shareable(organization, name)
    deleted, _ = (
        selectors.permission_list_for_model(organization=organization, model_name=name)
        .filter(public_id=permission_id)
        .delete()
    )
    if not deleted:
        raise ServiceError(
            f"No such checkpoint permission: {permission_id}", status=404, param="permission_id"
        )
    return {"object": "checkpoint.permission", "id": permission_id, "deleted": True}
