"""A real S3-compatible server for tests: moto's standalone server, as its own process.

The store is spoken to over HTTP by boto3, exactly as in production; only the server is a
stand-in for AWS/MinIO (it keeps objects in its own memory).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen[bytes]

    def env(self, bucket: str) -> dict[str, str]:
        """The environment a Tunery process needs to use this server."""
        return {
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_REGION": "us-east-1",
            "S3_ACCESS_KEY_ID": "test",
            "S3_SECRET_ACCESS_KEY": "test",  # noqa: S105 -- moto accepts any
        }

    def new_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self) -> Any:  # a boto3 S3 client (boto3 ships no types)
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106
        )


@contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """Start `moto_server` on a free port (it picks one and prints it); stop it afterwards."""
    out = open(log, "wb")  # noqa: SIM115 -- the server's whole life
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", "0"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 30
        endpoint = None
        while endpoint is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
            found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log.read_text())
            endpoint = found.group(1) if found else None
            time.sleep(0.1)
        yield S3Server(endpoint, proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        out.close()
