"""Recovery: kill the training worker at a random step of a 1-epoch job, with the real beat and
the default liveness settings, and measure what the user sees.

Per trial: a fresh job (tiny model, batch size 1, one epoch of --steps steps) on a training
worker; at a random step between 20% and 80% of the epoch, `kill -9` of the worker. Measured from
the kill: seconds until the job object (as the API serialises it) says `worker.lost`, and until
it is back in the queue; then a fresh worker resumes it. Reported: the step it was killed at,
the step it resumed from (a resume checkpoint every --every-steps steps, and every 600 s of
training by default), and the largest relative difference between its results file and an
uninterrupted run's (same spec, trained in this process; every process on one thread).

    .venv/bin/python bench/recovery/run.py [--trials 3] [--steps 60] [--every-steps 10]
        [--json FILE]

Runs the embedded setup (SQLite, the filesystem broker; beat, a default worker for the reaper,
training workers) in a scratch DATA_DIR; DATABASE_URL and CELERY_BROKER_URL in the environment
are ignored. Targets: "worker lost" within 30 s, requeued
within 60 s, resumed from at most --every-steps steps back, results equal within 1e-4.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
DATA = next(
    p / "shared" / "data" / "sms_spam" / "train.jsonl"
    for p in REPO.parents
    if (p / "shared" / "data").is_dir()
)


def start(argv: list[str], env: dict[str, str], log: Path, cpu: int | None) -> Any:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", *argv],
        cwd=REPO,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )


def wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out after {timeout} s waiting for {what}")


def max_rel_diff(a_text: str, b_text: str) -> float:
    a, b = (list(csv.DictReader(io.StringIO(t))) for t in (a_text, b_text))
    if [r["step"] for r in a] != [r["step"] for r in b]:
        return float("inf")
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        for key, value in ra.items():
            if value != rb[key]:
                x, y = float(value or "nan"), float(rb[key] or "nan")
                worst = max(worst, abs(x - y) / max(abs(y), 1e-12))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every-steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="tunery-recovery-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL")}
    env.setdefault("TUNERY_MODEL_CACHE_DIR", str(REPO / "var" / "model-cache"))  # validation
    env.update(
        DATA_DIR=str(data_dir),
        DJANGO_SETTINGS_MODULE="config.settings",
        HF_HUB_OFFLINE="1",
        TUNERY_CHECKPOINT_EVERY_STEPS=str(args.every_steps),
        PYTHONUNBUFFERED="1",
    )
    os.environ.clear()
    os.environ.update(env)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)

    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User

    import engine
    from accounts.models import Membership, Organization
    from bench.common import machine
    from datasets.processing import file_validate
    from datasets.services import file_create
    from engine.tiny import build_tiny_model
    from jobs import runner, services
    from jobs.models import FineTuneJob, JobEvent
    from jobs.serializers import current_job_json
    from models_app.models import BaseModel

    tiny = build_tiny_model(data_dir / "tiny-model")
    BaseModel.objects.update_or_create(
        name="tiny-llama",
        defaults={"source": str(tiny), "context_length": 512, "base_lr_lora": 2e-2},
    )
    org = Organization.objects.create(name="Bench", slug="bench")
    user = User.objects.create(username="bench")
    Membership.objects.create(user=user, organization=org, role=Membership.Role.OWNER)
    rows = DATA.read_text().splitlines()[: args.steps]
    file = file_create(
        organization=org,
        uploaded_by=user,
        filename="sms.jsonl",
        purpose="fine-tune",
        content="\n".join(rows).encode() + b"\n",
    )
    file_validate(file_id=file.pk)

    logs = data_dir / "logs"
    logs.mkdir()
    beat = start(["beat", "--loglevel", "INFO"], env, logs / "beat.log", None)
    # The reaper (a beat task) runs on the default queue, as under `make run`.
    default = start(
        ["worker", "-Q", "default", "-c", "1", "-n", "default@%h", "--loglevel", "INFO"],
        env,
        logs / "default.log",
        None,
    )
    worker_args = ["worker", "-Q", "training", "--pool", "solo", "-c", "1", "--loglevel", "INFO"]
    n_workers = 0

    def new_worker() -> Any:
        nonlocal n_workers
        n_workers += 1
        name = f"bench-{n_workers}@%h"
        return start([*worker_args, "-n", name], env, logs / f"worker-{n_workers}.log", 0)

    worker = new_worker()
    results: list[dict[str, Any]] = []
    try:
        for trial in range(1, args.trials + 1):
            from jobs.services import JobRequest

            job = services.job_create(
                organization=org,
                created_by=user,
                req=JobRequest(
                    api="current",
                    model="tiny-llama",
                    training_file=file.public_id,
                    n_epochs=1,
                    batch_size=1,
                    seed=trial,
                ),
            )
            target = random.randint(args.steps // 5, args.steps * 4 // 5)  # noqa: S311
            wait(lambda: FineTuneJob.objects.get(pk=job.pk).step >= target, 600, "training")  # noqa: B023
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            killed = time.monotonic()
            reached = max(
                step
                for step in JobEvent.objects.filter(job=job, type="metrics", attempt=1).values_list(
                    "step", flat=True
                )
                if step is not None
            )
            lost_after = queued_after = None
            while queued_after is None and time.monotonic() - killed < 180:
                job.refresh_from_db()
                body = current_job_json(job)
                now = time.monotonic() - killed
                if lost_after is None and body["worker"] and body["worker"]["lost"]:
                    lost_after = now
                if body["status"] == "queued":
                    queued_after = now
                time.sleep(0.25)
            worker = new_worker()
            wait(
                lambda: FineTuneJob.objects.get(pk=job.pk).status in FineTuneJob.FINISHED,  # noqa: B023
                600,
                "the resumed job",
            )
            job.refresh_from_db()
            resumed = JobEvent.objects.filter(
                job=job, message__contains="resumed from step"
            ).first()
            spec = runner.job_spec(job, data_dir / f"straight-{trial}", resume_from=None)
            spec.checkpoints_dir = str(data_dir / f"straight-{trial}-checkpoints")
            spec.num_threads = 1
            straight = Path(engine.train(spec).results_csv).read_text()
            got = job.result_file.blob.open("rb").read().decode() if job.result_file else ""
            row = {
                "trial": trial,
                "status": job.status,
                "steps": args.steps,
                "killed_at_step": reached,
                "resumed_from_step": resumed.step if resumed is not None else None,
                "lost_after_s": round(lost_after, 1) if lost_after is not None else None,
                "requeued_after_s": round(queued_after, 1) if queued_after is not None else None,
                "results_max_rel_diff": max_rel_diff(got, straight) if got else None,
            }
            results.append(row)
            print(json.dumps(row), flush=True)  # noqa: T201
    finally:
        for proc in (worker, default, beat):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)

    print(
        f"\n{machine()}; reaper every {settings.TUNERY_REAPER_SECONDS:g} s, lost at "  # noqa: T201
        f"{settings.TUNERY_HEARTBEAT_LOST_SECONDS} s, requeued at "
        f"{settings.TUNERY_HEARTBEAT_STALE_SECONDS} s; a resume checkpoint every "
        f"{args.every_steps} steps\n"
    )
    print(
        "| trial | killed at step | resumed from step | 'worker lost' after | requeued after "  # noqa: T201
        "| results file vs uninterrupted (max rel. diff) |"
    )
    print("|---|---|---|---|---|---|")  # noqa: T201
    for r in results:
        print(  # noqa: T201
            f"| {r['trial']} | {r['killed_at_step']}/{r['steps']} | {r['resumed_from_step']} | "
            f"{r['lost_after_s']} s | {r['requeued_after_s']} s | {r['results_max_rel_diff']} |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
