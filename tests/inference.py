"""The inference service as a real process for tests (`manage.py serve_inference`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from django.conf import settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def inference_service(
    *args: str, log: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> Iterator[str]:
    """Start the service (no registry: the web tier names bases by source); yield its /v1 URL."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    environ.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", DATA_DIR=str(settings.DATA_DIR))
    # One torch thread: the tests' tiny models gain nothing from more, and CI has 2 cores.
    environ.setdefault("OMP_NUM_THREADS", "1")
    environ.update(env or {})
    out = open(log, "wb")  # noqa: SIM115 -- the service's whole life; closed below
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve_inference", "--port", str(port), "--no-registry",
         *args],
        cwd=settings.BASE_DIR, env=environ, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"serve_inference did not start:\n{log.read_text(errors='replace')}"
                    ) from None
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()


@dataclass
class Health:
    bases: list[str]
    base_loads: dict[str, int]
    adapters: dict[str, list[str]]
    schedulers: dict[str, dict[str, Any]]


def health(url: str) -> Health:
    """The service's /health: what it has loaded and how its schedulers are doing."""
    response = requests.get(url.removesuffix("/v1") + "/health", timeout=10)
    response.raise_for_status()
    data = response.json()
    return Health(data["bases"], data["base_loads"], data["adapters"], data["schedulers"])
