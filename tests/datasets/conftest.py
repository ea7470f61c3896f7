"""Fixtures for the datasets tests: isolated media, uploads, a real Celery worker, API clients.

`celery_worker` is meant for reuse (the jobs tests need one too): it starts a real
`celery worker` subprocess on the test database, the test media root and the project's broker,
once per session, on first use. Tests that use it must be
`@pytest.mark.django_db(transaction=True)` so that the worker can see their rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from datasets import processing
from datasets.models import File

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"


@pytest.fixture(scope="session")
def worker_media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The media root shared with the worker subprocess (which can't follow per-test dirs)."""
    return tmp_path_factory.mktemp("worker-media")


@pytest.fixture(autouse=True)
def media_dir(
    request: pytest.FixtureRequest, settings: Any, tmp_path: Path, worker_media_dir: Path
) -> Path:
    """Each test stores blobs in its own empty media root (tests with a worker share one)."""
    uses_worker = any(name.startswith("celery_worker") for name in request.fixturenames)
    path = worker_media_dir if uses_worker else tmp_path / "media"
    path.mkdir(exist_ok=True)
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


def _worker_settings(media_dir: Path) -> dict[str, Any]:
    from django.db import connection

    return {
        "DATABASE_NAME": connection.settings_dict["NAME"],
        "MEDIA_ROOT": str(media_dir),
        "TUNERY_TOKENIZER_DIR": getattr(settings, "TUNERY_TOKENIZER_DIR", None),
    }


@pytest.fixture(scope="session")
def celery_worker_factory(
    django_db_setup: Any, worker_media_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts `celery worker` subprocesses bound to the test database; stops them at the end.

    Call it with the queues to consume, e.g. `celery_worker_factory("default", "training")`.
    The worker runs tests/datasets/celery_worker.py, which points the project's settings at the
    test database (connection.settings_dict["NAME"]: the SQLite test file or `test_<name>` on
    PostgreSQL) and at the test media root before starting Celery.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(*queues: str, timeout: float = 90) -> subprocess.Popen[bytes]:
        from config.celery import app

        # Messages left by earlier runs would be consumed against this database: drop them.
        try:
            with app.connection_for_write() as conn:
                for queue in queues:
                    conn.default_channel.queue_purge(queue)
        except Exception:  # a queue that doesn't exist yet has nothing to purge
            pass
        log = tmp_path_factory.mktemp("celery") / "worker.log"
        env = os.environ | {
            "TUNERY_TEST_WORKER_SETTINGS": json.dumps(_worker_settings(worker_media_dir)),
            "DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "config.settings"),
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        args = [sys.executable, "-m", "tests.datasets.celery_worker", ",".join(queues)]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        started.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if " ready." in text:
                return process
            if process.poll() is not None:
                raise RuntimeError(f"The Celery worker exited early:\n{text}")
            time.sleep(0.2)
        raise RuntimeError(f"The Celery worker did not become ready in {timeout}s")

    yield start
    for process in started:
        process.terminate()
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def celery_worker(
    celery_worker_factory: Callable[..., subprocess.Popen[bytes]],
) -> subprocess.Popen[bytes]:
    """A real worker on the `default` queue (file validation), shared by the session."""
    return celery_worker_factory("default")


def wait_for_status(file: File, *, timeout: float = 60) -> File:
    """Poll the row until validation has finished, as the SDKs do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        file.refresh_from_db()
        if file.status != File.Status.UPLOADED:
            return file
        time.sleep(0.2)
    raise AssertionError(f"{file.public_id} was still `uploaded` after {timeout}s")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # Personas get real passwords; PBKDF2's deliberate slowness costs ~1 s per test here.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
