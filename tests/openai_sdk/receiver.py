"""A real HTTP server on 127.0.0.1 that records webhook deliveries (for the tests)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.body)
        return body


@dataclass
class Receiver:
    url: str
    deliveries: list[Delivery] = field(default_factory=list)
    # Status codes to answer, in order; 200 once they run out (to test retries).
    statuses: list[int] = field(default_factory=list)

    def wait_for(self, predicate: Any, timeout: float = 60) -> Delivery:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for delivery in list(self.deliveries):
                if predicate(delivery):
                    return delivery
            time.sleep(0.2)
        raise AssertionError(f"no matching delivery in {timeout}s; got {self.deliveries}")

    def of_type(self, event_type: str, job_id: str, timeout: float = 60) -> Delivery:
        return self.wait_for(
            lambda d: d.event.get("type") == event_type and d.event["data"].get("id") == job_id,
            timeout,
        )


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            status = receiver.statuses.pop(0) if receiver.statuses else 200
            receiver.deliveries.append(
                Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            )
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/tunery"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
