"""Fixtures for the datasets tests: isolated media, uploads, a real Celery worker, API clients.

`celery_worker` runs one real `celery worker` process on the `default` queue for the whole
session (tests.workers starts it on the test database and broker). Tests that use it must be
`@pytest.mark.django_db(transaction=True)` so that the worker can see their rows.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from datasets import processing
from datasets.models import File

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture(autouse=True)
def media_dir(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> Path:
    """Each test stores blobs in its own empty media root.

    Tests with a worker keep the configured one (DATA_DIR/media): the worker process reads
    blobs there and can't follow a per-test directory.
    """
    if "celery_worker" in request.fixturenames:
        return Path(settings.MEDIA_ROOT)
    path = tmp_path / "media"
    path.mkdir()
    settings.MEDIA_ROOT = str(path)
    return path


def blobs_of(org_id: int, media_dir: Path) -> list[Path]:
    folder = media_dir / "files" / str(org_id)
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body with filenames exactly as given (Django's test client basenames them)."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value in fields.items():
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    for name, (filename, data) in files.items():
        quoted = filename.replace("\\", "\\\\").replace('"', '\\"')
        out += (
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"; filename="{quoted}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def upload(
    client: Client, data: bytes, filename: str = "train.jsonl", purpose: str = "fine-tune"
) -> Any:
    body, content_type = multipart({"purpose": purpose}, {"file": (filename, data)})
    return client.post("/v1/files", body, content_type=content_type)


def jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def validate(file: File) -> File:
    """Run the worker-side validation in-process and return the refreshed row."""
    processing.file_validate(file_id=file.pk)
    file.refresh_from_db()
    return file


@pytest.fixture(scope="session")
def token_counter() -> Any:
    """The real default tokenizer (the engine converts the embedded GGUF once, then caches)."""
    from datasets import tokens

    return tokens.get_counter()


# --- a real Celery worker ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def celery_worker(django_db_setup: Any, django_db_blocker: Any) -> Iterator[Any]:
    """A real worker on the `default` queue (file validation), shared by the module.

    Not by the session: alive after it, it would take other tests' default-queue messages
    (validations, webhook deliveries) with this module's settings."""
    from tests.workers import celery_worker as start_worker
    from tests.workers import purge_broker

    purge_broker()  # messages from earlier runs would be consumed against this database
    with start_worker(queues="default") as process:
        yield process


def wait_for_status(file: File, *, timeout: float = 60) -> File:
    """Poll the row until validation has finished, as the SDKs do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        file.refresh_from_db()
        if file.status != File.Status.UPLOADED:
            return file
        time.sleep(0.2)
    raise AssertionError(f"{file.public_id} was still `uploaded` after {timeout}s")
