"""The files admin: scoped to the owner's orgs, read-only, deleting through the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

from django.test import Client

from datasets import services
from datasets.models import File
from tests.conftest import Persona
from tests.datasets.conftest import jsonl

DATA = jsonl([{"prompt": "a ->", "completion": " b"}])


def make_file(persona: Persona, name: str) -> File:
    with mock.patch("datasets.tasks.validate_file.delay"):
        return services.file_create(
            organization=persona.org,
            uploaded_by=persona.user,
            filename=name,
            purpose="fine-tune",
            content=DATA,
        )


def staff_client(persona: Persona) -> Client:
    persona.user.is_staff = True
    persona.user.save(update_fields=["is_staff"])
    client = Client()
    client.force_login(persona.user)
    return client


def test_admin_lists_only_the_owners_files(owner: Persona, outsider: Persona) -> None:
    make_file(owner, "ours.jsonl")
    theirs = make_file(outsider, "theirs.jsonl")
    client = staff_client(owner)

    page = client.get("/admin/datasets/file/").content.decode()

    assert "ours.jsonl" in page
    assert "theirs.jsonl" not in page
    assert client.get(f"/admin/datasets/file/{theirs.pk}/change/").status_code in (302, 404)
    assert client.get("/admin/datasets/file/add/").status_code == 403


def test_admin_delete_removes_the_blob_too(
    owner: Persona, media_dir: Path, django_capture_on_commit_callbacks: Any
) -> None:
    file = make_file(owner, "gone.jsonl")
    client = staff_client(owner)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/admin/datasets/file/{file.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not File.objects.filter(pk=file.pk).exists()
    assert file.blob.name  # stored: it has a name
    assert not (media_dir / file.blob.name).exists()
