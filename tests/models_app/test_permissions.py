"""Checkpoint permissions: an owner shares a fine-tuned model or checkpoint with another org.

The grantee may use it (completions, continue from); it may not delete it, re-share it, see its
job or its permissions; a third org sees nothing at all (the isolation tests, shared case).
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
import zipfile
from typing import Any
from unittest import mock

import pytest

from accounts.models import Organization
from jobs import paths
from jobs.models import Checkpoint, FineTuneJob
from models_app.models import BaseModel, FineTunedModel, ModelPermission
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona, _persona, streamed
from tests.factories import FileFactory, OrganizationFactory
from tests.playground.support import MakeFineTune, TinyDirs, ft_name


def make_checkpoint(
    org: Organization, base: BaseModel, tiny_dirs: TinyDirs, step: int = 6
) -> Checkpoint:
    """An exposed checkpoint of a finished job of `org`, with a real (tiny) LoRA adapter."""
    job = FineTuneJob.objects.create(
        public_id=f"ftjob-{uuid.uuid4().hex[:24]}",
        api=FineTuneJob.Api.CURRENT,
        organization=org,
        model=base.name,
        base_model=base,
        training_file=FileFactory.create(organization=org),
        seed=1,
        status=FineTuneJob.Status.SUCCEEDED,
    )
    # Where the engine writes it, and where it is served from (jobs.checkpoints).
    folder = paths.checkpoints_dir(job) / f"step-{step}"
    shutil.copytree(tiny_dirs.adapter_a, folder / "model")
    return Checkpoint.objects.create(
        public_id=f"ftckpt_{uuid.uuid4().hex[:24]}",
        job=job,
        step_number=step,
        epoch=1,
        path=str(folder),
        exposed=True,
        name=f"ft:{base.name}:{org.slug}::{job.public_id[-8:]}:ckpt-step-{step}",
        metrics={"train_loss": 1.0},
    )


def permissions_url(name: str, permission_id: str = "") -> str:
    tail = f"/{permission_id}" if permission_id else ""
    return f"/v1/fine_tuning/checkpoints/{name}/permissions{tail}"


def share(owner: Persona, name: str, *org_ids: str) -> Any:
    return owner.api().post(
        permissions_url(name),
        json.dumps({"project_ids": list(org_ids)}),
        content_type="application/json",
    )


@pytest.fixture
def third(db: None) -> Persona:
    """Owner of a third org: nothing was shared with it."""
    return _persona("tina", OrganizationFactory.create(name="Initech", slug="initech"), "owner")


def test_owner_shares_a_checkpoint_and_the_grantee_uses_it(
    owner: Persona,
    outsider: Persona,
    third: Persona,
    inference_base: BaseModel,
    tiny_dirs: TinyDirs,
) -> None:
    checkpoint = make_checkpoint(owner.org, inference_base, tiny_dirs)
    completion = {"model": checkpoint.name, "prompt": "hi", "max_tokens": 2}

    before = outsider.api().post("/v1/completions", completion, content_type="application/json")
    response = share(owner, checkpoint.name, outsider.org.public_id)

    assert_envelope(before, 404, "model_not_found")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "list" and body["has_more"] is False
    [permission] = body["data"]
    assert permission["object"] == "checkpoint.permission"
    assert permission["id"].startswith("cp_") and permission["project_id"] == outsider.org.public_id
    used = outsider.api().post("/v1/completions", completion, content_type="application/json")
    assert used.status_code == 200, used.content
    assert used.json()["model"] == checkpoint.name
    # Nobody else gained anything.
    assert_envelope(
        third.api().post("/v1/completions", completion, content_type="application/json"),
        404,
        "model_not_found",
    )
    # Granting again returns the same grant.
    again = share(owner, checkpoint.name, outsider.org.public_id).json()["data"]
    assert [p["id"] for p in again] == [permission["id"]]


def test_the_grantee_sees_no_job_no_permissions_and_cannot_reshare(
    owner: Persona, outsider: Persona, inference_base: BaseModel, tiny_dirs: TinyDirs
) -> None:
    checkpoint = make_checkpoint(owner.org, inference_base, tiny_dirs)
    share(owner, checkpoint.name, outsider.org.public_id)
    job_id = checkpoint.job.public_id
    client = outsider.api()

    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").status_code == 404
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}/events").status_code == 404
    assert_envelope(client.get(permissions_url(checkpoint.name)), 404, "model_not_found")
    assert_envelope(share(outsider, checkpoint.name, owner.org.public_id), 404, "model_not_found")
    assert job_id not in json.dumps(client.get("/v1/fine_tuning/jobs").json())


def test_a_shared_model_is_listed_usable_and_not_deletable_by_the_grantee(
    owner: Persona,
    outsider: Persona,
    third: Persona,
    make_fine_tune: MakeFineTune,
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    share(owner, model.name, outsider.org.public_id)

    listed = {m["id"]: m for m in outsider.api().get("/v1/models").json()["data"]}
    retrieved = outsider.api().get(f"/v1/models/{model.name}")
    deleted = outsider.api().delete(f"/v1/models/{model.name}")

    assert listed[model.name]["owned_by"] == owner.org.slug
    assert retrieved.status_code == 200
    assert assert_envelope(deleted, 403)["type"] == "permission_error"
    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is None
    assert model.name not in {m["id"] for m in third.api().get("/v1/models").json()["data"]}
    assert_envelope(third.api().delete(f"/v1/models/{model.name}"), 404, "model_not_found")


def test_the_grantee_continues_training_from_a_shared_checkpoint(
    owner: Persona, outsider: Persona, inference_base: BaseModel, tiny_dirs: TinyDirs
) -> None:
    checkpoint = make_checkpoint(owner.org, inference_base, tiny_dirs)
    theirs = FileFactory.create(organization=outsider.org)
    body = {"model": checkpoint.name, "training_file": theirs.public_id}

    refused = outsider.api().post("/v1/fine_tuning/jobs", body, content_type="application/json")
    share(owner, checkpoint.name, outsider.org.public_id)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        created = outsider.api().post("/v1/fine_tuning/jobs", body, content_type="application/json")

    assert_envelope(refused, 404, "model_not_found")
    assert created.status_code == 200, created.content
    job = FineTuneJob.objects.get(public_id=created.json()["id"])
    assert (job.organization, job.parent_checkpoint, job.base_model) == (
        outsider.org,
        checkpoint,
        inference_base,
    )


def test_deleting_the_permission_or_the_model_ends_the_grant(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    kept = make_fine_tune(owner.org, ft_name(owner.org, "kept"))
    dropped = make_fine_tune(owner.org, ft_name(owner.org, "dropped"))
    [grant] = share(owner, kept.name, outsider.org.public_id).json()["data"]
    share(owner, dropped.name, outsider.org.public_id)

    removed = owner.api().delete(permissions_url(kept.name, grant["id"]))
    with mock.patch("models_app.services._remove_files"):
        owner.api().delete(f"/v1/models/{dropped.name}")

    assert removed.json() == {"object": "checkpoint.permission", "id": grant["id"], "deleted": True}
    assert_envelope(outsider.api().get(f"/v1/models/{kept.name}"), 404, "model_not_found")
    assert_envelope(outsider.api().get(f"/v1/models/{dropped.name}"), 404, "model_not_found")
    assert_envelope(owner.api().delete(permissions_url(kept.name, grant["id"])), 404)


def test_sharing_needs_an_owner_and_real_other_orgs(
    owner: Persona, member: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    by_member = share(member, model.name, outsider.org.public_id)
    unknown = share(owner, model.name, outsider.org.public_id, "org-nope")
    own = share(owner, model.name, owner.org.public_id)
    empty = share(owner, model.name)
    someone_elses = share(outsider, model.name, owner.org.public_id)

    assert assert_envelope(by_member, 403)["type"] == "permission_error"
    assert assert_envelope(unknown, 400)["param"] == "project_ids.1"
    assert assert_envelope(own, 400)["param"] == "project_ids.0"
    assert assert_envelope(empty, 400)["param"] == "project_ids"
    assert_envelope(someone_elses, 404, "model_not_found")
    assert not ModelPermission.objects.exists()  # nothing half-written


def test_permission_list_pages_and_filters(
    owner: Persona, make_fine_tune: MakeFineTune, django_assert_max_num_queries: Any
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    orgs = [OrganizationFactory.create(slug=f"o{i}") for i in range(3)]
    share(owner, model.name, *(o.public_id for o in orgs))
    client = owner.api()

    first = client.get(permissions_url(model.name), {"limit": 2}).json()
    rest = client.get(permissions_url(model.name), {"limit": 2, "after": first["last_id"]}).json()
    ascending = client.get(permissions_url(model.name), {"order": "ascending"}).json()
    one = client.get(permissions_url(model.name), {"project_id": orgs[1].public_id}).json()
    with django_assert_max_num_queries(8):
        client.get(permissions_url(model.name))

    assert first["has_more"] is True and len(first["data"]) == 2
    assert rest["has_more"] is False and len(rest["data"]) == 1
    newest_first = [p["project_id"] for p in first["data"] + rest["data"]]
    assert newest_first == [o.public_id for o in reversed(orgs)]
    assert [p["project_id"] for p in ascending["data"]] == [o.public_id for o in orgs]
    assert [p["project_id"] for p in one["data"]] == [orgs[1].public_id]
    assert (
        assert_envelope(client.get(permissions_url(model.name), {"order": "sideways"}), 400)[
            "param"
        ]
        == "order"
    )


def test_a_checkpoint_downloads_like_a_model_and_only_for_its_org(
    client: Any,
    owner: Persona,
    outsider: Persona,
    inference_base: BaseModel,
    tiny_dirs: TinyDirs,
    django_capture_on_commit_callbacks: Any,
) -> None:
    """Prepared by a worker (the job page's button), then streamed; another org: 404 on all."""
    from models_app import processing
    from models_app.models import Export

    checkpoint = make_checkpoint(owner.org, inference_base, tiny_dirs)
    base = f"/jobs/{checkpoint.job.public_id}/checkpoints/{checkpoint.public_id}"
    url = f"{base}/download.zip"

    client.force_login(outsider.user)
    with mock.patch("models_app.tasks.build_export.delay") as delay:
        refused = [client.post(f"{base}/prepare/").status_code]
    refused += [client.get(u).status_code for u in (f"{base}/status/", url)]
    client.force_login(owner.user)
    page = client.get(f"/jobs/{checkpoint.job.public_id}/").content.decode()
    with (
        mock.patch("models_app.tasks.build_export.delay") as delay,
        django_capture_on_commit_callbacks(execute=True),
    ):
        pending = client.post(f"{base}/prepare/", headers={"HX-Request": "true"})
    row = Export.objects.get(checkpoint=checkpoint)
    processing.export_build(export_id=row.pk)  # what the worker runs
    ready = client.get(f"{base}/status/", headers={"HX-Request": "true"})
    response = client.get(url)
    archive = zipfile.ZipFile(io.BytesIO(streamed(response)))
    client.force_login(outsider.user)

    assert refused == [404, 404, 404]
    assert 'data-testid="checkpoint-prepare"' in page and "download.zip" not in page
    delay.assert_called_once_with(row.pk)
    assert b"Zipping" in pending.content and b"hx-trigger" in pending.content
    assert b'data-testid="checkpoint-download"' in ready.content
    assert response.status_code == 200
    assert "adapter_model.safetensors" in archive.namelist()
    assert not any(name.startswith("optimizer") for name in archive.namelist())
    assert client.get(url).status_code == 404
