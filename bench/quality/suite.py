"""Run one task of the quality suite end to end through Tunery's own job path.

API (upload the training and validation files, create the job) → a real Celery worker process
(validates the files, trains) → the fine-tuned model served by Tunery's inference service →
greedy generations (temperature 0) for every held-out test example, asked through the API
(`/v1/completions`, or `/v1/chat/completions` for the chat task) and scored
(bench/quality/scoring.py). Optionally the base model zero-shot the same way.

Uses the database, Redis and DATA_DIR of the environment (source your env file first); it
creates an organization `bench-quality` there. Build the data first (bench/quality/tasks.py).

    .venv/bin/python bench/quality/suite.py --task unicode_category --size 100 \
        [--model SmolLM2-135M-Instruct] [--early-stopping auto|false|N] [--zero-shot] \
        [--n-epochs N] [--batch-size N] [--learning-rate-multiplier X] [--test-limit N] \
        [--json FILE]

The sweep of issue 14 item 2 (every task × size × hyperparameter rule) is this command in a
loop; see docs/benchmarks/quality.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connections  # noqa: E402
from django.test import Client  # noqa: E402

from accounts import services as accounts  # noqa: E402
from accounts.models import Organization  # noqa: E402
from bench.common import machine  # noqa: E402
from bench.quality.scoring import score  # noqa: E402
from bench.quality.tasks import TASKS  # noqa: E402
from tests.inference import inference_service  # noqa: E402
from tests.workers import celery_worker, wait_for  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
MAX_TOKENS = {"classification": 8, "extraction": 64, "generation": 48, "chat": 32}


def api_client() -> Client:
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-quality")
    org = Organization.objects.filter(slug="bench-quality").first()
    if org is None:
        org = accounts.organization_create(name="bench-quality", owner=user, slug="bench-quality")
    key = accounts.api_key_create(organization=org, name="bench", created_by=user)
    return Client(HTTP_AUTHORIZATION=f"Bearer {key.secret}")


def upload(client: Client, path: Path) -> str:
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post(
        "/v1/files",
        {"purpose": "fine-tune", "file": SimpleUploadedFile(path.name, path.read_bytes())},
    )
    assert response.status_code == 200, response.content
    file_id = response.json()["id"]

    def ready() -> Any:
        body = client.get(f"/v1/files/{file_id}").json()
        return body if body["status"] in ("processed", "error") else None

    body = wait_for(ready, 600, interval=1, what=f"validation of {path.name}")
    assert body["status"] == "processed", body
    return str(file_id)


def _generate(client: Client, model: str, kind: str, row: dict[str, Any]) -> tuple[str, str]:
    if kind == "chat":
        body = {
            "model": model,
            "messages": row["messages"][:-1],
            "max_tokens": MAX_TOKENS[kind],
            "temperature": 0,
        }
        response = client.post("/v1/chat/completions", body, content_type="application/json")
        assert response.status_code == 200, response.content
        text = response.json()["choices"][0]["message"]["content"] or ""
        return row["messages"][-1]["content"], text
    body = {
        "model": model,
        "prompt": row["prompt"],
        "max_tokens": MAX_TOKENS[kind],
        "temperature": 0,
    }
    response = client.post("/v1/completions", body, content_type="application/json")
    assert response.status_code == 200, response.content
    return row["completion"], response.json()["choices"][0]["text"]


def generations(
    client: Client, model: str, kind: str, rows: list[dict[str, Any]], parallel: int = 8
) -> list[tuple[str, str]]:
    """Greedy generations for `rows`, `parallel` requests at a time: the inference service
    decodes concurrent requests in one batch (engine/batching.py), as it would for users."""

    def one(row: dict[str, Any]) -> tuple[str, str]:
        try:
            return _generate(client, model, kind, row)
        finally:
            connections.close_all()  # this thread's database connection

    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(one, rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def score_model(
    client: Client, model: str, kind: str, test: list[dict[str, Any]]
) -> tuple[dict[str, Any], float, list[tuple[str, str]]]:
    """`model`'s scores on `test`, the seconds they took, and the (expected, generated) pairs."""
    started = time.perf_counter()
    pairs = generations(client, model, kind, test)
    return score(kind, pairs), round(time.perf_counter() - started, 1), pairs


def train_and_score(
    client: Client,
    *,
    task: str,
    size: int,
    model: str,
    early: Any,
    seed: int,
    hyperparameters: dict[str, Any],
    test: list[dict[str, Any]],
) -> dict[str, Any]:
    """Upload the task's files, fine-tune through the API, score the fine-tuned model on `test`.
    Needs a worker and the inference service running (see `main`)."""
    kind = TASKS[task][0]
    directory = DATA / task
    training = upload(client, directory / f"train_{size}.jsonl")
    validation = upload(client, directory / "valid.jsonl")
    started = time.perf_counter()
    response = client.post(
        "/v1/fine_tuning/jobs",
        {
            "model": model,
            "training_file": training,
            "validation_file": validation,
            "seed": seed,
            "early_stopping": early,
            "hyperparameters": {
                name: hyperparameters.get(name) or "auto"
                for name in ("n_epochs", "batch_size", "learning_rate_multiplier")
            },
        },
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    job_id = response.json()["id"]
    print(f"job {job_id} created", flush=True)

    def finished() -> Any:
        body = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    job = wait_for(finished, 6 * 3600, interval=5, what=f"job {job_id}")
    summary: dict[str, Any] = {
        "job": job_id,
        "job_seconds": round(time.perf_counter() - started, 1),
        "status": job["status"],
        "hyperparameters": job["hyperparameters"],
        "trained_tokens": job.get("trained_tokens"),
    }
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]
    summary["selection"] = [
        e["message"]
        for e in events
        if e["message"].startswith(("Best checkpoint", "Early stopping"))
    ]
    if job["status"] != "succeeded":
        summary["error"] = job.get("error")
        return summary
    scores, seconds, pairs = score_model(client, job["fine_tuned_model"], kind, test)
    summary["fine_tuned"] = scores
    summary["scoring_seconds"] = seconds
    summary["examples"] = [{"expected": e, "generated": g} for e, g in pairs[:3]]
    return summary


def read_test(task: str, limit: int | None) -> list[dict[str, Any]]:
    directory = DATA / task
    if not directory.is_dir():
        raise SystemExit(f"No data for {task}: run bench/quality/tasks.py first")
    return read_jsonl(directory / "test.jsonl")[:limit]


def parse_early(value: str) -> Any:
    early: Any = {"false": False, "true": True}.get(value, value)
    if isinstance(early, str) and early.isdigit():
        early = int(early)
    return early


@contextmanager
def stack(log_dir: Path) -> Iterator[Client]:
    """A real Celery worker process and Tunery's inference service, and an API client of the
    `bench-quality` organization."""
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    call_command("migrate", verbosity=0)
    client = api_client()
    log_dir.mkdir(parents=True, exist_ok=True)
    with (
        celery_worker(log=log_dir / "worker.log"),
        inference_service(log=log_dir / "inference.log", env={"OMP_NUM_THREADS": "2"}) as url,
    ):
        settings.TUNERY_INFERENCE_URL = url
        settings.TUNERY_INFERENCE_BACKEND = "local"
        yield client


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--size", type=int, default=100, choices=(100, 500, 2000))
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--early-stopping", default="auto")
    parser.add_argument("--zero-shot", action="store_true", help="also score the base model")
    parser.add_argument("--test-limit", type=int, default=None, help="score the first N only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-epochs", type=int, default=None, help="default: auto")
    parser.add_argument("--batch-size", type=int, default=None, help="default: auto")
    parser.add_argument("--learning-rate-multiplier", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    kind = TASKS[args.task][0]
    test = read_test(args.task, args.test_limit)
    early = parse_early(args.early_stopping)
    summary: dict[str, Any] = {
        "task": args.task,
        "kind": kind,
        "size": args.size,
        "model": args.model,
        "early_stopping": early,
        "test_examples": len(test),
        "machine": machine(),
        "uptime_before": uptime(),
    }
    with stack(Path(settings.DATA_DIR) / "bench-quality") as client:
        if args.zero_shot:
            scores, seconds, _ = score_model(client, args.model, kind, test)
            summary["zero_shot"], summary["zero_shot_seconds"] = scores, seconds
            print("zero-shot:", scores, flush=True)
        summary |= train_and_score(
            client,
            task=args.task,
            size=args.size,
            model=args.model,
            early=early,
            seed=args.seed,
            hyperparameters={
                "n_epochs": args.n_epochs,
                "batch_size": args.batch_size,
                "learning_rate_multiplier": args.learning_rate_multiplier,
            },
            test=test,
        )
    summary["uptime_after"] = uptime()
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
