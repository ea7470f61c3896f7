"""The pinned last 1.x SDK (`openai==1.109.1`, in .venv-openai1: requirements-openai1.txt) drives
the main calls against a live server: files, jobs create/list/retrieve/cancel/list_events, and
completions. The main venv holds the newest SDK; many users still run 1.x."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import Persona, sms_subset
from tests.workers import celery_worker, purge_broker

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

PYTHON_1X = Path(settings.BASE_DIR) / ".venv-openai1" / "bin" / "python"

SCRIPT = """
import json, sys
import openai
from openai import OpenAI

assert openai.__version__.startswith("1."), openai.__version__
client = OpenAI(max_retries=0)  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment
out = {"version": openai.__version__}
file = client.files.create(file=open(sys.argv[1], "rb"), purpose="fine-tune")
out["file"] = client.files.wait_for_processing(file.id, poll_interval=0.3, max_wait_seconds=120).status
job = client.fine_tuning.jobs.create(
    model="tiny-llama", training_file=file.id, hyperparameters={"n_epochs": 2}, suffix="one",
    metadata={"client": "1.x"},
)
out["created"] = job.status
out["retrieved"] = client.fine_tuning.jobs.retrieve(job.id).id == job.id
out["listed"] = [j.id for j in client.fine_tuning.jobs.list(limit=1, metadata={"client": "1.x"})] == [job.id]
out["cancelled"] = client.fine_tuning.jobs.cancel(job.id).status
page = client.fine_tuning.jobs.list_events(job.id, limit=2)
out["events_page"] = [len(page.data), page.has_more]
events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=2)]
out["events"] = [events[0], events[-1]]
out["checkpoints"] = len(list(client.fine_tuning.jobs.checkpoints.list(job.id)))
try:
    client.fine_tuning.jobs.cancel(job.id)
except openai.BadRequestError as exc:
    out["cancel_again"] = exc.status_code
out["completion"] = client.completions.create(model="tiny-llama", prompt="Hi", max_tokens=2).model
out["models"] = "tiny-llama" in [m.id for m in client.models.list()]
print(json.dumps(out))
"""


def test_openai_1x_drives_files_jobs_and_completions(
    live_server: Any, owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    if not PYTHON_1X.exists():
        pytest.fail(
            "The 1.x SDK venv is missing: make .venv-openai1/.installed (make test does this)"
        )
    purge_broker()
    env = {
        **os.environ,
        "OPENAI_BASE_URL": f"{live_server.url}/v1",
        "OPENAI_API_KEY": owner.key,
    }
    with celery_worker(queues="default"):  # validates the upload; no training worker needed
        run = subprocess.run(
            [str(PYTHON_1X), "-c", SCRIPT, str(sms_subset(tmp_path, 16))],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["events"][1].startswith("Created fine-tuning job: ftjob-")  # all pages followed
    assert out == {
        "version": "1.109.1",
        "file": "processed",
        "created": "queued",
        "retrieved": True,
        "listed": True,
        "cancelled": "cancelled",
        "events_page": [2, True],
        "events": [
            "Fine tuning process stopping due to job cancellation",
            out["events"][1],
        ],
        "checkpoints": 0,
        "cancel_again": 400,
        "completion": "tiny-llama",
        "models": True,
    }
