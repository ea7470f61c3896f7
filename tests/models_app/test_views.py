"""Model pages: list with usage, detail, samples, downloads, export and owner-only delete."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any
from unittest import mock

from django.core.management import call_command
from django.test import Client

from models_app import files, processing, services
from models_app.models import BaseModel, Export, FineTunedModel, UsageRecord
from tests.conftest import Persona, streamed
from tests.playground.support import TINY_BASE, MakeFineTune, TinyDirs, ft_name


def browser(persona: Persona) -> Client:
    client = Client()
    client.force_login(persona.user)
    return client


def test_list_shows_name_base_org_created_and_usage(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    services.usage_record(organization=owner.org, model_name=model.name, api_key=None,
                          user=owner.user, prompt_tokens=1234, completion_tokens=567)  # fmt: skip

    page = browser(owner).get("/models/").content.decode()

    assert model.name in page
    assert TINY_BASE in page
    assert "acme" in page
    assert "1234 / 567" in page


def test_detail_shows_base_usage_and_delete_for_owners(
    owner: Persona, member: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    services.usage_record(organization=owner.org, model_name=model.name, api_key=None,
                          user=owner.user, prompt_tokens=11, completion_tokens=22)  # fmt: skip

    as_owner = browser(owner).get(f"/models/{model.name}/").content.decode()
    as_member = browser(member).get(f"/models/{model.name}/").content.decode()

    assert TINY_BASE in as_owner
    assert "<td>11</td><td>22</td>" in as_owner
    assert 'data-testid="delete-model"' in as_owner
    assert 'data-testid="delete-model"' not in as_member


def test_another_orgs_model_pages_are_404(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    theirs = make_fine_tune(outsider.org, ft_name(outsider.org))
    client = browser(owner)

    for suffix in ("", "delete/", "adapter.zip", "adapter/status/", "export/status/", "merged.zip"):
        assert client.get(f"/models/{theirs.name}/{suffix}").status_code == 404
    with mock.patch("models_app.tasks.build_export.delay") as delay:
        for suffix in ("adapter/prepare/", "export/"):
            assert client.post(f"/models/{theirs.name}/{suffix}").status_code == 404
    delay.assert_not_called()
    assert not Export.objects.exists()


def test_samples_fragment_completes_training_prompts(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    response = browser(owner).post(f"/models/{model.name}/samples/", headers={"HX-Request": "true"})

    body = response.content.decode()
    assert response.status_code == 200
    assert 'id="samples"' in body
    assert 'data-testid="sample-completion"' in body
    assert "samples-button" not in body  # the fragment replaces the button once
    # Counted in the org's usage, as samples (not as the user's own requests).
    (row,) = UsageRecord.objects.filter(organization=owner.org, model_name=model.name)
    assert row.kind == "samples" and row.requests >= 1 and row.completion_tokens > 0


def test_the_model_page_generates_no_samples_until_asked(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    with mock.patch("playground.services.completion_create") as complete:
        body = browser(owner).get(f"/models/{model.name}/").content.decode()

    complete.assert_not_called()
    assert 'data-testid="samples-button"' in body and 'hx-trigger="load"' not in body
    assert not UsageRecord.objects.filter(organization=owner.org).exists()


def test_member_cannot_delete_from_the_browser(
    member: Persona, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    assert browser(member).post(f"/models/{model.name}/delete/").status_code == 403
    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is None


def test_owner_confirms_then_deletes(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = browser(owner)

    confirm = client.get(f"/models/{model.name}/delete/")
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/models/{model.name}/delete/")

    assert b"Delete permanently" in confirm.content
    assert response.status_code == 302
    assert response["Location"] == "/models/"
    assert not Path(model.artifact_dir).exists()
    assert client.get(f"/models/{model.name}/").status_code == 404


def test_adapter_download_is_a_zip_of_safetensors_and_config(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    """Prepare (a worker zips it) → "Zipping…", polled → a link → the zip, as before."""
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = browser(owner)
    htmx = {"HX-Request": "true"}

    page = client.get(f"/models/{model.name}/").content.decode()
    before = client.get(f"/models/{model.name}/adapter.zip")
    with (
        mock.patch("models_app.tasks.build_export.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        pending = client.post(f"/models/{model.name}/adapter/prepare/", headers=htmx)
        again = client.post(f"/models/{model.name}/adapter/prepare/", headers=htmx)
    (row,) = Export.objects.filter(model=model, kind=Export.Kind.MODEL_FILES)
    processing.export_build(export_id=row.pk)  # what the worker runs
    ready = client.get(f"/models/{model.name}/adapter/status/", headers=htmx)
    response = client.get(f"/models/{model.name}/adapter.zip")

    assert 'data-testid="adapter-prepare"' in page and "adapter.zip" not in page
    assert before.status_code == 404  # nothing is zipped in the request
    delay.assert_called_once_with(row.pk)  # two clicks, one build
    assert b"hx-trigger" in pending.content and b"Zipping the adapter" in again.content
    assert b"hx-trigger" not in ready.content
    assert b'data-testid="adapter-download"' in ready.content
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    assert f"{model.name.replace(':', '_')}-adapter.zip" in response["Content-Disposition"]
    archive = zipfile.ZipFile(io.BytesIO(streamed(response)))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(archive.namelist())
    # The same content as the zip the request used to build.
    adapter = files.adapter_dir(model)
    assert adapter is not None
    for name in archive.namelist():
        assert archive.read(name) == (adapter / name).read_bytes()


def test_a_failed_download_shows_the_error_and_can_be_tried_again(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = browser(owner)
    htmx = {"HX-Request": "true"}

    with (
        mock.patch("models_app.tasks.build_export.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        client.post(f"/models/{model.name}/adapter/prepare/", headers=htmx)
        row = Export.objects.get(model=model, kind=Export.Kind.MODEL_FILES)
        with mock.patch("models_app.processing.directory_zip", side_effect=OSError("disk full")):
            processing.export_build(export_id=row.pk)
        failed = client.get(f"/models/{model.name}/adapter/status/", headers=htmx)
        retried = client.post(f"/models/{model.name}/adapter/prepare/", headers=htmx)
    processing.export_build(export_id=row.pk)

    assert b"disk full" in failed.content and b"Try again" in failed.content
    assert b"hx-trigger" not in failed.content  # nothing to poll for
    assert b"hx-trigger" in retried.content
    assert delay.call_count == 2
    assert services.export_state(kind="model_files", subject=model)["status"] == "ready"
    assert client.get(f"/models/{model.name}/adapter.zip").status_code == 200


def test_a_full_fine_tune_downloads_its_weights(
    owner: Persona, make_fine_tune: MakeFineTune, tiny_dirs: TinyDirs
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    weights = Path(model.artifact_dir)
    shutil.rmtree(weights)
    shutil.copytree(tiny_dirs.base, weights)
    FineTunedModel.objects.filter(pk=model.pk).update(method="full")
    model.refresh_from_db()

    processing.export_build(export_id=services_row(model, "model_files"))
    response = browser(owner).get(f"/models/{model.name}/adapter.zip")

    assert "-weights.zip" in response["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(streamed(response))).namelist()
    assert "config.json" in names and "model.safetensors" in names


def services_row(model: FineTunedModel, kind: str) -> int:
    with mock.patch("models_app.tasks.build_export.delay"):
        services.export_start(kind=kind, subject=model)
    return Export.objects.get(model=model, kind=kind).pk


def test_export_button_queues_the_task_and_polls_until_ready(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = browser(owner)

    with (
        mock.patch("models_app.tasks.build_export.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        pending = client.post(f"/models/{model.name}/export/", headers={"HX-Request": "true"})
    folder = files.exports_dir(model)
    folder.mkdir(parents=True)  # as the export worker does
    (folder / "merged.zip").write_bytes(b"PK")
    ready = client.get(f"/models/{model.name}/export/status/", headers={"HX-Request": "true"})
    download = client.get(f"/models/{model.name}/merged.zip")

    delay.assert_called_once_with(Export.objects.get(model=model, kind="merged").pk)
    assert b"hx-trigger" in pending.content  # polling while pending
    assert b"hx-trigger" not in ready.content  # and stops once ready
    assert b'data-testid="merged-download"' in ready.content
    assert streamed(download) == b"PK"


def test_merged_download_before_export_is_404(owner: Persona, make_fine_tune: MakeFineTune) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    assert browser(owner).get(f"/models/{model.name}/merged.zip").status_code == 404


def test_register_base_model_command(tiny_dirs: TinyDirs, db: None) -> None:
    out = io.StringIO()

    call_command("register_base_model", "tiny-cmd", str(tiny_dirs.base), "--alias", "tc",
                 "--lr-lora", "0.0003", "--price-generate", "0.25", stdout=out)  # fmt: skip

    base = BaseModel.objects.get(name="tiny-cmd")
    assert base.aliases == ["tc"]
    assert base.context_length == 512
    assert base.base_lr_lora == 0.0003
    assert "Registered tiny-cmd" in out.getvalue()


def test_register_base_model_command_reports_bad_sources(db: None) -> None:
    import pytest
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="source"):
        call_command("register_base_model", "x", "/no/such/dir")


def test_admin_lists_only_the_owners_fine_tunes(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    ours = make_fine_tune(owner.org, ft_name(owner.org))
    theirs = make_fine_tune(outsider.org, ft_name(outsider.org))
    owner.user.is_staff = True
    owner.user.save(update_fields=["is_staff"])

    page = browser(owner).get("/admin/models_app/finetunedmodel/").content.decode()

    assert ours.name in page
    assert theirs.name not in page


def _job_for(model: FineTunedModel) -> Any:
    from jobs.models import FineTuneJob, JobEvent
    from tests.factories import FileFactory

    job = FineTuneJob.objects.create(
        public_id="ftjob-test123", api=FineTuneJob.Api.CURRENT, organization=model.organization,
        model=model.base.name, base_model=model.base, seed=1, status=FineTuneJob.Status.SUCCEEDED,
        training_file=FileFactory.create(organization=model.organization), trained_tokens=4321,
    )  # fmt: skip
    JobEvent.objects.create(job=job, type=JobEvent.Type.METRICS, message="Step 1/2", data={
        "step": 1, "results": {"step": 1, "training_loss": 9.0}})  # fmt: skip
    JobEvent.objects.create(job=job, type=JobEvent.Type.METRICS, message="Step 2/2", data={
        "step": 2, "results": {"step": 2, "training_loss": 1.25, "validation_loss": 1.5}})  # fmt: skip
    FineTunedModel.objects.filter(pk=model.pk).update(job=job)
    model.refresh_from_db()
    return job


def test_detail_shows_the_source_job_and_its_final_metrics(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    job = _job_for(model)

    page = browser(owner).get(f"/models/{model.name}/").content.decode()

    assert job.public_id in page
    assert "4321 tokens trained" in page
    assert "training_loss" in page
    assert "1.2500" in page
    assert "9.0000" not in page  # the final row, not an earlier one


def test_samples_come_from_the_jobs_training_prompts(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    _job_for(model)

    body = browser(owner).post(f"/models/{model.name}/samples/").content.decode()

    # FileFactory's training file holds {"prompt": "a", ...}.
    assert "<pre>a</pre>" in body


def test_deleting_removes_the_jobs_copy_of_the_weights_too(
    owner: Persona, make_fine_tune: MakeFineTune, django_capture_on_commit_callbacks: Any
) -> None:
    from jobs.paths import attempt_dir, job_dir

    model = make_fine_tune(owner.org, ft_name(owner.org))
    job = _job_for(model)
    engine_output = attempt_dir(job, 1) / "model"
    engine_output.mkdir(parents=True)
    (engine_output / "adapter_model.safetensors").write_bytes(b"weights")

    with django_capture_on_commit_callbacks(execute=True):
        services.model_delete(model=model, by_role="owner")

    assert not engine_output.exists()
    assert not Path(model.artifact_dir).exists()
    shutil.rmtree(job_dir(job), ignore_errors=True)


def test_admin_form_checks_the_lora_shape(db: None) -> None:
    from django.forms.models import model_to_dict

    from models_app.admin import BaseModelForm

    def form(**shape: Any) -> BaseModelForm:
        # A fresh instance each time: a bound form writes its values into the one it edits.
        base = BaseModel.objects.get(name="SmolLM2-135M-Instruct")
        data = {k: v for k, v in model_to_dict(base).items() if v is not None}
        data["aliases"] = json.dumps(base.aliases)
        return BaseModelForm(data=data | shape, instance=base)

    bad = form(lora_rank=0, lora_target_modules="q_proj, v-proj", warmup_ratio=0.9)
    assert not bad.is_valid()
    assert "v-proj" in bad.errors["lora_target_modules"][0]
    assert set(bad.errors) == {"lora_rank", "lora_target_modules", "warmup_ratio"}

    good = form(lora_rank=16, lora_target_modules=" q_proj , model.layers.0.mlp.up_proj,")
    assert good.is_valid(), good.errors
    saved = good.save()
    assert saved.lora_target_modules == "q_proj,model.layers.0.mlp.up_proj"
    assert (saved.lora_rank, saved.lora_alpha, saved.warmup_ratio) == (16, None, None)
    # The admin spells the settings as the docs do.
    assert [good.fields[f].label for f in ("lora_rank", "lora_alpha", "warmup_ratio")] == [
        "LoRA rank",
        "LoRA alpha",
        "Warm-up ratio",
    ]
