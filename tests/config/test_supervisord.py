"""`make run`'s supervisor: kill any role with SIGKILL and only that role comes back.

The real stack from config/supervisord.conf (uvicorn web, inference service, training worker,
default worker, beat) on this test's PostgreSQL and Redis, with its own port and run directory,
and a tiny-model training job running through it all. The training worker is killed first,
mid-job; while its job waits for the reaper (beat → default worker) and resumes, every other
role is killed in turn. The job still succeeds, and each kill restarts that role alone.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
import requests
from django.conf import settings
from supervisor.xmlrpc import SupervisorTransport

from engine.devices import detect
from jobs.models import FineTuneJob
from tests.conftest import Persona
from tests.jobs.test_recovery import make_job, reported
from tests.workers import purge_broker, subprocess_env, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROLES = ("worker_training", "web", "inference", "worker_default", "beat")
SUPERVISORD = Path(settings.BASE_DIR) / ".venv" / "bin" / "supervisord"
CONF = Path(settings.BASE_DIR) / "config" / "supervisord.conf"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    def __init__(self, run_dir: Path, port: int, inference_port: int) -> None:
        self.port, self.inference_port = port, inference_port
        self.socket = f"unix://{run_dir}/supervisor.sock"

    def pids(self) -> dict[str, int]:
        """Each role's pid while it is RUNNING (a role that isn't is absent)."""
        transport = SupervisorTransport(None, None, self.socket)  # one per call: no stale state
        rpc: Any = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            infos = rpc.supervisor.getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault):
            return {}
        return {i["group"]: i["pid"] for i in infos if i["statename"] == "RUNNING"}

    def answers(self) -> bool:
        try:
            web = requests.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5)
            inference = requests.get(f"http://127.0.0.1:{self.inference_port}/health", timeout=5)
        except requests.RequestException:
            return False
        return web.ok and inference.ok


def test_each_role_killed_comes_back_alone_and_the_job_still_succeeds(
    owner: Persona, tiny_base: Any, tmp_path: Path
) -> None:
    purge_broker()
    # Queued: the stack's training worker takes it. Long enough that its worker is killed
    # mid-epoch (the tiny model takes a few ms a step). It asks for this host's device class
    # (`cpu` here), so it is routed to `training.cpu`, which make run's worker (started by
    # scripts/training-worker on its devices' queues) must consume.
    job = make_job(owner, tmp_path, examples=96, device_class=detect()["kind"])
    port, inference_port = _free_port(), _free_port()
    env = subprocess_env(
        DJANGO_SECRET_KEY=secrets.token_urlsafe(30),
        TUNERY_RUN_DIR=str(tmp_path),
        TUNERY_PORT=str(port),
        TUNERY_INFERENCE_PORT=str(inference_port),
        TUNERY_WEB_PROCESSES="1",
        # Liveness at test speed: beats every second, requeued 4 s after the last one.
        TUNERY_HEARTBEAT_SECONDS="1",
        TUNERY_HEARTBEAT_LOST_SECONDS="2",
        TUNERY_HEARTBEAT_STALE_SECONDS="3",
        TUNERY_REAPER_SECONDS="1",
        TUNERY_CHECKPOINT_EVERY_STEPS="4",
    )
    log = tmp_path / "supervisord.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(SUPERVISORD), "-c", str(CONF)],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack = Stack(tmp_path, port, inference_port)
    try:
        wait_for(lambda: set(stack.pids()) == set(ROLES), 60, what="all five roles RUNNING")
        wait_for(lambda: reported(job) >= 2, 120, 0.02, what="training")
        started = time.monotonic()
        for role in ROLES:
            before = stack.pids()
            os.kill(before[role], signal.SIGKILL)

            def restarted(role: str = role, old: int = before[role]) -> dict[str, int] | None:
                pids = stack.pids()
                return pids if pids.get(role) not in (None, old) else None

            after = wait_for(
                restarted,
                60,
                0.2,
                what=f"{role} restarted",
            )
            others = {r: pid for r, pid in before.items() if r != role}
            assert {r: after.get(r) for r in others} == others, f"killing {role} touched others"
        wait_for(stack.answers, 90, what="web and inference answering again")
        print(f"\nevery role killed and back in {time.monotonic() - started:.0f} s")  # noqa: T201

        wait_for(
            lambda: FineTuneJob.objects.get(pk=job.pk).status in FineTuneJob.FINISHED,
            180,
            what="the job finished",
        )
        job.refresh_from_db()
        assert job.status == FineTuneJob.Status.SUCCEEDED, (job.error, log.read_text()[-3000:])
        assert job.attempts == 2  # the killed attempt, then the resumed one
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # supervisord stops every role
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
