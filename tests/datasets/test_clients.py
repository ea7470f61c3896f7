"""The official clients against a live server, with a real Celery worker validating uploads.

* the current `openai` SDK (in .venv): files.create/list/retrieve/content/delete, auto-paging;
* the `openai==0.28.1` CLI (in .venv-openai028): `openai api files.create/list/get/delete`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from datasets.models import File
from tests.conftest import Persona
from tests.datasets.conftest import REPO, jsonl, wait_for_status

GOOD = jsonl(
    [{"prompt": f"Is {i} even? ->", "completion": " yes" if i % 2 else " no"} for i in range(20)]
)
CLI_028 = REPO / ".venv-openai028" / "bin" / "openai"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sdk(live_server: Any, owner: Persona) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=owner.key, max_retries=0)


def test_current_sdk_files_roundtrip_through_the_queue(
    sdk: openai.OpenAI, celery_worker: Any, tmp_path: Path
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(GOOD)

    with path.open("rb") as fh:
        created = sdk.files.create(file=fh, purpose="fine-tune")
    processed = sdk.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=60)

    assert (created.status, created.filename, created.bytes) == (
        "uploaded",
        "train.jsonl",
        len(GOOD),
    )
    assert processed.status == "processed"
    assert processed.status_details.startswith("20 examples")
    assert sdk.files.retrieve(created.id).id == created.id
    assert sdk.files.content(created.id).read() == GOOD

    deleted = sdk.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.files.retrieve(created.id)
    assert caught.value.body == {
        "message": f"No such File object: {created.id}",
        "type": "invalid_request_error",
        "param": "id",
        "code": None,
    }


def test_current_sdk_sees_a_bad_file_end_in_error(sdk: openai.OpenAI, celery_worker: Any) -> None:
    bad = GOOD + b'{"prompt": "x", "completion": 5}\n'

    created = sdk.files.create(file=("bad.jsonl", bad), purpose="fine-tune")
    done = sdk.files.wait_for_processing(created.id, poll_interval=0.2, max_wait_seconds=60)

    assert done.status == "error"
    assert done.status_details == ("1 error; line 21: `completion` must be a string, got number")


def test_current_sdk_auto_pages_the_list_with_after(
    sdk: openai.OpenAI, owner: Persona, celery_worker: Any
) -> None:
    ids = [sdk.files.create(file=(f"f{i}.jsonl", GOOD), purpose="fine-tune").id for i in range(5)]

    first = sdk.files.list(limit=2)
    everything = [f.id for f in sdk.files.list(limit=2)]  # iterating follows has_more/after

    assert first.has_more is True
    assert len(first.data) == 2
    assert everything == list(reversed(ids))
    assert [f.id for f in sdk.files.list(limit=2, order="asc", purpose="fine-tune")] == ids
    for file in File.objects.filter(organization=owner.org):
        wait_for_status(file)  # let the worker finish before the test database is flushed


def test_current_sdk_errors_map_to_its_exceptions(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("t.jsonl", GOOD), purpose="assistants")
    assert caught.value.param == "purpose"

    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("t.xlsx", b"PK\x03\x04..."), purpose="fine-tune")
    assert caught.value.code == "invalid_file_format"


def test_current_sdk_gets_413_for_an_oversize_upload(sdk: openai.OpenAI, settings: Any) -> None:
    settings.MAX_UPLOAD_BYTES = 100

    with pytest.raises(openai.APIStatusError) as caught:
        sdk.files.create(file=("big.jsonl", GOOD), purpose="fine-tune")

    assert caught.value.status_code == 413
    assert caught.value.code == "file_too_large"
    assert not File.objects.exists()


# --- the legacy 0.28 CLI -----------------------------------------------------------------------


def cli028(live_server: Any, key: str, *args: str, cwd: Path) -> Any:
    if not CLI_028.exists():
        pytest.fail(
            "The 0.28 CLI is missing: python3.11 -m venv .venv-openai028 && "
            ".venv-openai028/bin/pip install -r requirements-openai028.txt (make test does this)"
        )
    env = os.environ | {"OPENAI_API_BASE": f"{live_server.url}/v1", "OPENAI_API_KEY": key}
    done = subprocess.run(
        [str(CLI_028), "api", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout[done.stdout.index("{") :])


def test_028_cli_files_create_list_get_delete(
    live_server: Any, owner: Persona, celery_worker: Any, tmp_path: Path
) -> None:
    (tmp_path / "data" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "sub" / "train.jsonl").write_bytes(GOOD)

    def run(*args: str) -> Any:
        return cli028(live_server, owner.key, *args, cwd=tmp_path)

    created = run("files.create", "-f", "data/sub/train.jsonl", "-p", "fine-tune")
    wait_for_status(File.objects.get(public_id=created["id"]))
    listed = run("files.list")
    got = run("files.get", "-i", created["id"])
    deleted = run("files.delete", "-i", created["id"])

    # The CLI sends the path as typed; the server keeps the basename (what 0.28 compares).
    assert (created["object"], created["filename"], created["bytes"]) == (
        "file",
        "train.jsonl",
        len(GOOD),
    )
    assert [f["id"] for f in listed["data"]] == [created["id"]]
    assert got["status"] == "processed"
    assert deleted == {"id": created["id"], "object": "file", "deleted": True}
    assert not File.objects.filter(public_id=created["id"]).exists()
