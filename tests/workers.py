"""Real Celery worker processes for tests about the queue (not eager mode, not mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from django.conf import settings
from django.db import connection


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment a worker needs to share this test's database and broker."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    else:
        user = db.get("USER") or "postgres"
        env["DATABASE_URL"] = (
            f"postgres://{user}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    env["CELERY_BROKER_URL"] = settings.CELERY_BROKER_URL
    env["DATA_DIR"] = str(settings.DATA_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def purge_broker() -> None:
    """Drop messages left by earlier runs (a killed worker's unacked ones, say)."""
    if settings.CELERY_BROKER_URL.startswith("redis"):
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    else:
        for sub in ("queue", "processed"):
            for path in (Path(settings.DATA_DIR) / "broker" / sub).glob("*"):
                path.unlink(missing_ok=True)


@contextmanager
def celery_worker(
    queues: str = "training,default",
    log: Path | None = None,
    cpus: set[int] | None = None,
    **env: str,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `celery worker` as a real process; stop it (SIGTERM, then SIGKILL) afterwards.

    `cpus` pins it to those cores (so the engine trains with that many threads, whatever the
    machine's load: runs compare exactly). `queues="devices"` starts it as production does,
    through scripts/training-worker, on the queues of the devices it detects."""
    log = log or Path(settings.DATA_DIR) / f"worker-{os.getpid()}-{time.monotonic_ns()}.log"
    out = open(log, "wb")  # noqa: SIM115 -- open for the worker's whole life; closed below
    if queues == "devices":
        head = [str(Path(settings.BASE_DIR) / "scripts" / "training-worker")]
        # The script runs `python` and `celery`: this venv's.
        env.setdefault("PATH", f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    else:
        head = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", queues]
        head += ["--pool", "solo", "--concurrency", "1"]
    proc = subprocess.Popen(
        [
            *head,
            "-n",
            f"test-{time.monotonic_ns()}@%h",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        cwd=settings.BASE_DIR,
        env=subprocess_env(**env),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    # Where the worker logs, for tests that read it (Popen has no slot for it).
    proc.log_path = log  # type: ignore[attr-defined]  # see above
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)  # in case a test left it stopped
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()


T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.5, what: str = "condition"
) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
