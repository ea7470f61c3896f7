"""Weights & Biases: native logging from the runner, `openai wandb sync` from the 0.28.1 CLI
against a live server, and `manage.py wandb_sync`. Always offline: runs are written under
tmp_path and read back from their `.wandb` files; nothing leaves the machine.

`openai wandb sync` insists on a verified W&B login before it logs anything (its
`_ensure_logged_in` needs `wandb.login()` to return True), and wandb refuses to verify a login
in offline mode. The test gives it what a user's machine would have: an API key, wandb's
`WANDB__CLI_ONLY_MODE` (which lets `wandb.login()` run in offline mode) and a W&B server to
verify the key with, here a loopback stand-in that knows the key and no runs or artifacts
(`wandb_stub`). Everything else is real: the CLI, wandb, Tunery's API and the training.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.test import Client
from django.utils.html import escape

from common.redact import redact
from datasets import services as file_services
from datasets.processing import file_validate
from engine.metrics import SELECTION_COLUMN
from jobs import runner, services
from jobs import wandb as job_wandb
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from tests.conftest import Persona, sms_subset
from tests.factories import FileFactory
from tests.workers import wait_for

pytestmark = pytest.mark.slow

VENV_028 = Path(settings.BASE_DIR) / ".venv-openai028" / "bin"
FAKE_KEY = "tunery-test-" + "0" * 40  # well-formed; only the stand-in server ever sees it


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: Any) -> Path:
    """Offline W&B with every directory under tmp_path."""
    root = tmp_path / "wandb-env"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (root / name).mkdir(parents=True)
        monkeypatch.setenv(name, str(root / name))
    settings.TUNERY_WANDB_DIR = tmp_path / "tunery-wandb"
    return root


# --- reading an offline run back --------------------------------------------------------------


@dataclass
class OfflineRun:
    """What one `.wandb` file recorded, decoded with wandb's own protobufs."""

    run: Any = None
    history: dict[int, dict[str, float]] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def _records(path: Path) -> Iterator[bytes]:
    """The records of a `.wandb` file: wandb-core writes LevelDB's log format (32 KiB blocks of
    7-byte-headed chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST) after a 7-byte header."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        if pos + 7 + length > len(data):
            return  # still being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            yield pending
            pending = b""


def _parsed(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for raw in _records(path):
        # The generated protobuf module declares no types for mypy.
        record = pb.Record()  # type: ignore[attr-defined]  # see above
        record.ParseFromString(raw)
        records.append(record)
    return records


def read_offline_run(path: Path) -> OfflineRun:
    """The run once its `exit` record is written: wandb-core writes the file on its own
    schedule, and `run.finish()` may return before it has."""
    records = wait_for(
        lambda: (r := _parsed(path)) and r[-1].WhichOneof("record_type") == "exit" and r,
        30,
        interval=0.2,
        what=f"the exit record in {path}",
    )
    out = OfflineRun()
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run = record.run
            out.config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            out.config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            out.history[int(items["_step"])] = {
                k: v for k, v in items.items() if not k.startswith("_")
            }
        elif kind == "artifact":
            out.artifacts[record.artifact.name] = record.artifact
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    out.summary[key] = json.loads(item.value_json)
    return out


def offline_runs(directory: Path) -> list[Path]:
    return sorted(directory.glob("offline-run-*/run-*.wandb"))


def results_of(job: FineTuneJob) -> list[dict[str, str]]:
    assert job.result_file is not None
    with job.result_file.blob.open("rb") as raw:
        return list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8")))


def assert_history_is_the_results_file(run: OfflineRun, job: FineTuneJob) -> set[str]:
    """Every row at its step, with every value the results file has for it; returns the
    numeric columns that had a value."""
    rows = results_of(job)
    assert sorted(run.history) == [int(r["step"]) for r in rows]
    seen: set[str] = set()
    for row in rows:
        logged = run.history[int(row["step"])]
        # The winner's mark is written once training ends: a live run can't log a past step.
        expected = {
            k: float(v) for k, v in row.items() if k not in ("step", SELECTION_COLUMN) and v != ""
        }
        assert set(expected) <= set(logged), (row["step"], set(expected) - set(logged))
        for key, value in expected.items():
            # The file rounds to 6 decimals; the live run logs full precision.
            assert math.isclose(logged[key], value, rel_tol=1e-6, abs_tol=1e-6), (key, value)
        seen |= set(expected)
    return seen


# --- a trained job ----------------------------------------------------------------------------


def trained_job(owner: Persona, tmp_path: Path, **fields: Any) -> FineTuneJob:
    """A real tiny-model job, trained in this process, with a training and a validation file."""

    def upload(path: Path) -> str:
        file = file_services.file_create(
            organization=owner.org,
            uploaded_by=owner.user,
            filename=path.name,
            purpose="fine-tune",
            content=path.read_bytes(),
        )
        file_validate(file_id=file.pk)
        return file.public_id

    train = upload(sms_subset(tmp_path, 24))
    valid = upload(sms_subset(tmp_path, 8, name="valid.jsonl", split="valid"))
    fields = {"api": "current", "n_epochs": 1, "batch_size": 4, **fields}
    with mock.patch("jobs.tasks.run_training_job.delay"):  # trained right here instead
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                model="tiny-llama", training_file=train, validation_file=valid, **fields
            ),
        )
    runner.job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    return job


# --- the stand-in W&B server for `openai wandb sync`'s login ---------------------------------


class _WandbStub(BaseHTTPRequestHandler):
    """Answers wandb's GraphQL: the key is valid (`viewer`), and no run or artifact exists."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        query = body.get("query", "")
        if "viewer" in query:
            data: dict[str, Any] = {
                "data": {
                    "viewer": {
                        "id": "VXNlcjox",
                        "entity": "tunery-test",
                        "username": "tunery-test",
                        "email": None,
                        "flags": None,
                        "teams": {"edges": []},
                    }
                }
            }
        elif "serverInfo" in query:
            data = {"data": {"serverInfo": {"features": []}}}
        else:
            data = {"data": None, "errors": [{"message": "not found"}]}
        out = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def wandb_stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WandbStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


SUBPROCESS: dict[str, Any] = {
    "stdin": subprocess.DEVNULL,
    "capture_output": True,
    "text": True,
    "timeout": 180,
}


def run_028(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_028 / "openai"), *args], **SUBPROCESS, env=env)


def numeric_columns(job: FineTuneJob) -> set[str]:
    """The results file's columns (but `step` and the winner's mark, see above) that have a
    value in some row."""
    rows = results_of(job)
    skip = ("step", SELECTION_COLUMN)
    return {c for c in rows[0] if c not in skip and any(r[c] for r in rows)}


def env_028(
    live_server: Any, owner: Persona, wandb_env: Path, stub: str, out: Path
) -> dict[str, str]:
    """What a user of the 0.28.1 CLI sets to write `openai wandb sync`'s run offline."""
    out.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "OPENAI_API_BASE": f"{live_server.url}/v1",
        "OPENAI_API_KEY": owner.key,
        "WANDB_MODE": "offline",
        "WANDB__CLI_ONLY_MODE": "true",
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_BASE_URL": stub,
        "WANDB_DIR": str(out),
    }


# --- native logging + `openai wandb sync` -----------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_wandb_job_logs_offline_and_openai_028_wandb_sync_logs_it_too(
    live_server: Any,
    owner: Persona,
    tiny_base: Any,
    tmp_path: Path,
    wandb_env: Path,
    wandb_stub: str,
) -> None:
    # given a job created with a wandb integration (current API), trained for real
    job = trained_job(
        owner,
        tmp_path,
        integrations=[
            {"type": "wandb", "wandb": {"project": "sms", "name": "spam run", "tags": ["sms"]}}
        ],
    )

    # then its run was written offline, in the job's own directory
    run_dir = settings.TUNERY_WANDB_DIR / job.public_id / "wandb"
    assert job.wandb_run == str(run_dir)
    [path] = offline_runs(run_dir)
    native = read_offline_run(path)
    assert native.run.run_id == job.public_id
    assert native.run.project == "sms"
    assert native.run.display_name == "spam run"
    assert set(native.run.tags) == {
        "tunery/finetune",
        "tunery/tiny-llama",
        f"tunery/{job.public_id}",
        "sms",
    }
    assert native.config["hyperparameters"] == {
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate_multiplier": job.resolved_hyperparameters["learning_rate_multiplier"],
        "prompt_loss_weight": 0.01,
    }
    assert native.config["n_train"] == 24
    columns = assert_history_is_the_results_file(native, job)
    assert {"training_loss", "validation_loss"} <= columns
    assert native.artifacts["train-sms.jsonl"].type == "training_files"
    assert native.artifacts["valid-valid.jsonl"].type == "validation_files"
    assert [c.path for c in native.artifacts["train-sms.jsonl"].manifest.contents] == ["sms.jsonl"]
    assert native.summary["fine_tuned_model"] == job.fine_tuned_model
    assert native.summary["status"] == "succeeded"
    assert not job.events.filter(level="warn").exists()
    assert job.events.filter(message__startswith="Logging to Weights & Biases: ").exists()

    # and the job page names the directory and the command that uploads it, without the
    # server's absolute path (an org member is not the server's admin)
    browser = Client()
    browser.force_login(owner.user)
    page = browser.get(job.get_absolute_url()).content.decode()
    assert f"wandb sync {escape(redact(str(run_dir)))}" in page
    assert str(run_dir) not in page

    # when the 0.28.1 CLI syncs the same job from the live server
    env = env_028(live_server, owner, wandb_env, wandb_stub, tmp_path / "cli")
    done = run_028(env, "wandb", "sync", "-i", job.public_id, "--project", "cli")

    # then its offline run has every numeric column of the results file, row by row
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wandb sync completed successfully" in done.stdout, done.stdout + done.stderr
    [path] = offline_runs(tmp_path / "cli" / "wandb")
    synced = read_offline_run(path)
    assert synced.run.run_id == job.public_id and synced.run.project == "cli"
    assert assert_history_is_the_results_file(synced, job) == columns == numeric_columns(job)
    assert synced.summary["fine_tuned_model"] == job.fine_tuned_model
    assert synced.summary["status"] == "succeeded"
    assert synced.config["training_file"] == job.training_file.public_id
    assert "fine_tune_details" in synced.artifacts  # §8.6 (c): no dataset artifacts here


@pytest.mark.django_db(transaction=True)
def test_org_switch_logs_a_legacy_job_and_the_028_logger_syncs_it(
    live_server: Any,
    owner: Persona,
    tiny_base: Any,
    tmp_path: Path,
    wandb_env: Path,
    wandb_stub: str,
) -> None:
    # given an organization with W&B switched on, and a legacy job that asked for nothing
    owner.org.wandb_enabled = True
    owner.org.save(update_fields=["wandb_enabled"])
    job = trained_job(
        owner,
        tmp_path,
        api="legacy",
        compute_classification_metrics=True,
        classification_positive_class=" spam",
    )

    # then it logged to the default project
    [path] = offline_runs(settings.TUNERY_WANDB_DIR / job.public_id / "wandb")
    native = read_offline_run(path)
    assert native.run.project == settings.TUNERY_WANDB_PROJECT == "tunery"
    assert native.run.display_name == job.public_id
    columns = assert_history_is_the_results_file(native, job)
    assert {"classification/accuracy", "classification/auroc", "validation_loss"} <= columns

    # when the 0.28.1 CLI syncs it: `--legacy` is ignored (§8.6 bug a), so it asks
    # /v1/fine_tuning/jobs/ft-…, which Tunery answers for legacy jobs too
    env = env_028(live_server, owner, wandb_env, wandb_stub, tmp_path / "cli")
    cli = run_028(env, "wandb", "sync", "-i", job.public_id, "--legacy", "--project", "cli")

    # then its run has every numeric column of the results file, classification ones included
    assert cli.returncode == 0, cli.stdout + cli.stderr
    [path] = offline_runs(tmp_path / "cli" / "wandb")
    synced = read_offline_run(path)
    assert synced.run.run_id == job.public_id and synced.run.project == "cli"
    assert assert_history_is_the_results_file(synced, job) == columns == numeric_columns(job)
    assert synced.summary["status"] == "succeeded"

    # when WandbLogger.sync(legacy=True) reads it from /v1/fine-tunes/ft-… instead
    env = env_028(live_server, owner, wandb_env, wandb_stub, tmp_path / "legacy")
    script = (
        "from openai.wandb_logger import WandbLogger;"
        f"print(WandbLogger.sync(id={job.public_id!r}, legacy=True, project='legacy'))"
    )
    legacy = subprocess.run([str(VENV_028 / "python"), "-c", script], **SUBPROCESS, env=env)

    # then it got the job, its results and its training file from Tunery, and stopped where
    # wandb refuses an offline run: using that file as an input artifact (docs/howto/wandb.md).
    # Each message ruled out below is the logger giving up on a download Tunery didn't serve.
    out = legacy.stdout
    assert "will not be logged" not in out and "could not be" not in out, out
    assert legacy.returncode == 1
    assert "TypeError: Cannot use artifact when in offline mode." in legacy.stderr
    [path] = offline_runs(tmp_path / "legacy" / "wandb")
    assert path.name == f"run-{job.public_id}.wandb"


# --- failures, resume, the command ------------------------------------------------------------


@pytest.mark.django_db
def test_a_wandb_failure_is_a_warning_and_wandb_sync_logs_the_job_afterwards(
    owner: Persona, tiny_base: Any, tmp_path: Path, wandb_env: Path
) -> None:
    # given W&B failing when the run starts
    integrations = [{"type": "wandb", "wandb": {"project": "sms"}}]
    with mock.patch("wandb.init", side_effect=RuntimeError("W&B is down")):
        job = trained_job(owner, tmp_path, integrations=integrations)

    # then the job still succeeded, with a warning and no run
    warning = job.events.get(level="warn")
    assert warning.message.startswith("Weights & Biases logging failed (RuntimeError: W&B is down)")
    assert job.wandb_run == ""

    # when the command logs it after the fact
    out = io.StringIO()
    call_command("wandb_sync", "-i", job.public_id, "--entity", "my-team", stdout=out)

    # then it has a run like a live one: every row, both files, the model name
    job.refresh_from_db()
    run_dir = settings.TUNERY_WANDB_DIR / job.public_id / "wandb"
    assert job.wandb_run == str(run_dir)
    assert (
        f"{job.public_id}: logged to {run_dir} (offline; upload it with `wandb sync {run_dir}`)"
        in out.getvalue()
    )
    [path] = offline_runs(run_dir)
    logged = read_offline_run(path)
    assert (logged.run.project, logged.run.entity) == ("sms", "my-team")
    assert_history_is_the_results_file(logged, job)
    assert {"train-sms.jsonl", "valid-valid.jsonl"} <= set(logged.artifacts)
    assert logged.summary["fine_tuned_model"] == job.fine_tuned_model

    # and a second time it is skipped, while --force logs it again in place of the first
    call_command("wandb_sync", "-i", job.public_id, stdout=(second := io.StringIO()))
    assert "already logged" in second.getvalue()
    assert offline_runs(run_dir) == [path]
    call_command("wandb_sync", "-n", "5", "--force", "--project", "again", stdout=io.StringIO())
    # (W&B names a run's directory by the second it started: the path may be the same one)
    [again] = offline_runs(run_dir)
    assert read_offline_run(again).run.project == "again"


@pytest.mark.django_db
def test_wandb_sync_refuses_unknown_and_unfinished_jobs(owner: Persona, wandb_env: Path) -> None:
    with pytest.raises(CommandError, match="No fine-tune job with id 'ftjob-nope'"):
        call_command("wandb_sync", "-i", "ftjob-nope")
    with pytest.raises(CommandError, match="-n must be at least 1"):
        call_command("wandb_sync", "-n", "0")
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="current", model="ada", training_file=training.public_id),
        )
    with pytest.raises(CommandError, match="has the status 'queued'; only succeeded jobs"):
        call_command("wandb_sync", "-i", job.public_id)


@pytest.mark.django_db
def test_a_resumed_job_goes_on_in_the_same_run(owner: Persona, wandb_env: Path) -> None:
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(
                api="current",
                model="ada",
                training_file=training.public_id,
                integrations=[{"type": "wandb", "wandb": {"project": "p"}}],
            ),
        )
    first = job_wandb.JobRun(job)
    first.start(resume=False)
    first.log({"step": 1, "training_loss": 2.0, "validation_loss": float("nan")})
    first.close()  # the job is handed back to the queue (its worker stopped responding)...
    second = job_wandb.JobRun(job)  # ...and another worker resumes it from its checkpoint
    second.start(resume=True)
    second.log({"step": 2, "training_loss": 1.0})
    second.close()

    parts = [read_offline_run(p) for p in offline_runs(Path(job.wandb_run))]
    assert [p.run.run_id for p in parts] == [job.public_id, job.public_id]
    histories = sorted((p.history for p in parts), key=lambda h: min(h))
    assert histories == [{1: {"training_loss": 2.0}}, {2: {"training_loss": 1.0}}]
    assert [len(p.artifacts) for p in sorted(parts, key=lambda p: min(p.history))] == [1, 0]
    assert not job.events.filter(level="warn").exists()


@pytest.mark.django_db
def test_the_job_page_links_an_online_run(owner: Persona) -> None:
    training = FileFactory.create(organization=owner.org)
    with mock.patch("jobs.tasks.run_training_job.delay"):
        job = services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="current", model="ada", training_file=training.public_id),
        )
    url = "https://wandb.ai/acme/sms/runs/" + job.public_id
    FineTuneJob.objects.filter(pk=job.pk).update(wandb_run=url)
    browser = Client()
    browser.force_login(owner.user)

    page = browser.get(job.get_absolute_url()).content.decode()

    assert f'<a href="{url}" target="_blank" rel="noopener">{url}</a>' in page
    assert "wandb sync" not in page
