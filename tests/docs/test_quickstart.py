"""The README's quick start, as a new user runs it: `make run`, then the key it printed."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from django.conf import settings

from scripts.docs_check import ROOT, extract_commands, shell, venv_is_current

pytestmark = pytest.mark.slow

# supervisord's names (config/supervisord.conf); it logs each one's start on make run's stdout.
PROCESSES = ("inference", "web-0", "worker_training", "worker_default", "beat")


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if re.search(pattern, text):
            return text
        if proc.poll() is not None:
            pytest.fail(f"`make run` exited {proc.returncode} early:\n{text[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no {pattern!r} after {timeout}s:\n{log.read_text(errors='replace')[-4000:]}")


def test_make_run_serves_the_api(tmp_path: Path) -> None:
    """`make run` in a fresh DATA_DIR: it migrates, bootstraps, prints a key and starts all five
    processes; the README's `export KEY=…` + curl then list the models; Ctrl-C stops it all.

    Two differences from a new machine: the model cache is the test session's (the GGUF
    conversion is tested elsewhere and costs a minute), and the web server gets a free port
    through TUNERY_PORT (the README's way out when 8000 is taken), which the curl then uses.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_ALLOW_ASYNC_UNSAFE")
    }
    port = _free_port()
    env.update(
        DATA_DIR=str(tmp_path / "var"),
        TUNERY_MODEL_CACHE_DIR=str(settings.TUNERY_MODEL_CACHE_DIR),
        TUNERY_PORT=str(port),
        # The inference service's port too: another checkout's `make run` may hold 8001.
        TUNERY_INFERENCE_PORT=str(_free_port()),
    )
    assert venv_is_current(ROOT, env), "run `make venv` first: `make run` would reinstall .venv"
    readme = [c.text for c in extract_commands(ROOT / "README.md", ROOT)]
    assert "make run" in readme

    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "run"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            text = _wait_for(log, r"API key:\s+sk-tunery-\S+", proc, timeout=300)
            key = re.search(r"API key:\s+(sk-tunery-\S+)", text).group(1)
            for name in PROCESSES:
                _wait_for(log, rf"success: {re.escape(name)} entered RUNNING", proc, timeout=120)
            _wait_for(log, r"\btraining@\S+ ready\.", proc, timeout=180)
            _wait_for(log, r"\bdefault@\S+ ready\.", proc, timeout=180)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).ok:
                        break
                except requests.RequestException:  # not listening yet, or still booting
                    pass
                time.sleep(0.5)

            # The README's next block, as written: export the key, list the models.
            (export,) = [c for c in readme if c.startswith("export KEY=")]
            (curl,) = [c for c in readme if c.startswith("curl ")]
            curl = curl.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            listed = shell(
                f"{export.replace('sk-tunery-…', key)}\n{curl}", cwd=tmp_path, env=env, timeout=60
            )
            assert '"id":"SmolLM2-135M-Instruct"' in listed.replace(" ", ""), listed
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the README says
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    assert not _port_in_use(port), "Ctrl-C left the web server running"
