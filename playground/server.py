"""Tunery's inference service (`manage.py serve_inference`): the engine behind HTTP.

The web tier's backends (`playground.backends`) reach it with the subset of vLLM's API they
use, so the service and vLLM are interchangeable behind a Tunery web tier:

    GET  /v1/models, /health
    POST /v1/completions, /v1/chat/completions      (same parsing and rendering as /v1)
    POST /v1/load_lora_adapter   {"lora_name", "lora_path", "base_model"?}
    POST /v1/unload_lora_adapter {"lora_name"}

`model` names a base (from `--base NAME=SOURCE`, else the registry's base models), a base's
source (`package:NAME` or an absolute path: how the web tier addresses bases, so the service
needs no database), a loaded LoRA adapter, or a model directory (a full fine-tune). Concurrent
requests are batched continuously (`engine.batching`); past the queue's limit the answer is a
429 with Retry-After. A request whose client disconnects is cancelled.

There is no authentication: bind it to loopback or a private network, as with vLLM without
--api-key. Django keeps access control; this service only runs what it is told to.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import artifacts
from common.errors import ServiceError
from config.api import error_body
from playground import protocol
from playground.backends import Target
from playground.engine_backend import ClientGone, EngineBackend
from playground.inference import SseStream, run_chat, run_completion

logger = logging.getLogger(__name__)

BaseLookup = Callable[[str], Path | None]


class EngineServer:
    """The server's state: which names mean which weights. Thread-safe."""

    def __init__(
        self, *, backend: EngineBackend, lookup_base: BaseLookup, default_base: str | None = None
    ) -> None:
        self.backend = backend
        self._lookup_base = lookup_base
        # The base of adapters loaded without "base_model" (vLLM serves a single base).
        self.default_base = default_base
        self._loras: dict[str, tuple[Path, str | None]] = {}  # name -> (path, base name)
        self._lock = threading.Lock()

    def base_dir(self, name: str) -> Path | None:
        found = self._lookup_base(name)
        if found is not None:
            return found
        if name.startswith(artifacts.PORTABLE):  # a full fine-tune's weights in the store
            try:
                return artifacts.resolve_portable(name)
            except (FileNotFoundError, ValueError):
                return None
        path = Path(name)
        if path.is_absolute() and (path / "config.json").is_file():
            return path
        return None

    def target(self, model: str) -> Target:
        with self._lock:
            lora = self._loras.get(model)
        if lora is not None:
            adapter, base_name = lora
            base_name = base_name or self.default_base
            base = self.base_dir(base_name) if base_name else None
            if base is None:
                raise ServiceError(
                    f"The base model of `{model}` is not served here.",
                    status=404,
                    param="model",
                    code="model_not_found",
                )
            return Target(model, base_name or "", base_dir=base, adapter_dir=adapter)
        base = self.base_dir(model)
        if base is None:
            raise ServiceError(
                f"The model `{model}` does not exist.",
                status=404,
                param="model",
                code="model_not_found",
            )
        return Target(model, model, base_dir=base)

    def load_lora(self, body: dict[str, Any]) -> str:
        name, path = body.get("lora_name"), body.get("lora_path")
        if not isinstance(name, str) or not name:
            raise ServiceError("lora_name is required", param="lora_name")
        if isinstance(path, str) and path.startswith(artifacts.PORTABLE):
            # `store:<key>`: the adapter is in the artifact store (this host shares no disk
            # with the one that trained it); served from this host's cache.
            try:
                path = str(artifacts.resolve_portable(path))
            except (FileNotFoundError, ValueError):
                raise ServiceError(f"No LoRA adapter at {path!r}", param="lora_path") from None
        if not isinstance(path, str) or not (Path(path) / "adapter_config.json").is_file():
            raise ServiceError(f"No LoRA adapter at {path!r}", param="lora_path")
        base = body.get("base_model")
        if base is not None and self.base_dir(str(base)) is None:
            raise ServiceError(f"Unknown base model {base!r}", status=404, param="base_model")
        with self._lock:
            known = self._loras.get(name)
            self._loras[name] = (Path(path), str(base) if base else None)
        if known is not None and known[0] != Path(path):
            # The web tier is the registry: a name now meaning other weights (vLLM's
            # load_inplace) replaces them, and the old weights leave memory.
            self.backend.unload_adapter(name=name, adapter_dir=known[0])
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload_lora(self, body: dict[str, Any]) -> str:
        name = body.get("lora_name")
        with self._lock:
            known = self._loras.pop(str(name), None)
        if known is None:
            raise ServiceError(
                f"The lora adapter '{name}' cannot be found.", status=404, param="lora_name"
            )
        self.backend.unload_adapter(name=str(name), adapter_dir=known[0])
        return f"Success: LoRA adapter '{name}' removed successfully."

    def models(self) -> dict[str, Any]:
        with self._lock:
            loras = dict(self._loras)
        data = [
            {"id": name, "object": "model", "owned_by": "tunery", "parent": base, "root": str(path)}
            for name, (path, base) in loras.items()
        ]
        return {"object": "list", "data": data}

    def health(self) -> dict[str, Any]:
        stats = self.backend.pool.stats()
        return {
            "status": "ok",
            "bases": stats.loaded_bases,
            "base_loads": stats.base_loads,
            "adapters": stats.adapters,
            "schedulers": {k: asdict(v) for k, v in stats.schedulers.items()},
        }

    def handle(self, method: str, path: str, body: dict[str, Any]) -> Any:
        """Route one request: returns a JSON dict, a text message or an SSE stream."""
        if method == "GET" and path == "/v1/models":
            return self.models()
        if method == "GET" and path == "/health":
            return self.health()
        if method == "POST" and path == "/v1/completions":
            call = protocol.parse_completion(body)
            return run_completion(self.backend, self.target(call.model), call)
        if method == "POST" and path == "/v1/chat/completions":
            chat = protocol.parse_chat(body)
            return run_chat(self.backend, self.target(chat.model), chat)
        if method == "POST" and path == "/v1/load_lora_adapter":
            return self.load_lora(body)
        if method == "POST" and path == "/v1/unload_lora_adapter":
            return self.unload_lora(body)
        raise ServiceError(f"Invalid URL ({method} {path})", status=404, code="not_found")


def make_handler(server_state: EngineServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive for JSON; streams close when done

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("%s " + format, self.address_string(), *args)

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _read_body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw.strip():
                return {}
            try:
                data = json.loads(raw)
            except ValueError:
                raise ServiceError("The request body is not valid JSON.") from None
            if not isinstance(data, dict):
                raise ServiceError("The request body must be a JSON object.")
            return data

        def _client_gone(self) -> bool:
            """True once the client closed its end (it sends nothing while it waits)."""
            try:
                readable, _, _ = select.select([self.connection], [], [], 0)
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
            except (OSError, ValueError):
                return True

        def _dispatch(self, method: str) -> None:
            try:
                path = self.path.split("?", 1)[0]
                body = self._read_body()
                with server_state.backend.watching(self._client_gone):
                    result = server_state.handle(method, path, body)
            except ClientGone:
                logger.info("client went away; its request was cancelled")
                self.close_connection = True
                return
            except ServiceError as exc:
                body = error_body(exc.message, type=exc.type, param=exc.param, code=exc.code)
                self._send_json(body, exc.status_code, exc.headers)
                return
            except Exception:
                logger.exception("inference server error on %s %s", method, self.path)
                body = error_body(
                    "The server had an error while processing your request.", type="server_error"
                )
                self._send_json(body, 500)
                return
            if isinstance(result, SseStream):
                with server_state.backend.watching(self._client_gone):
                    self._send_stream(result)
            elif isinstance(result, str):
                self._send(result.encode(), 200, "text/plain; charset=utf-8")
            else:
                self._send_json(result, 200)

        def _send_json(
            self, payload: dict[str, Any], status: int, headers: dict[str, str] | None = None
        ) -> None:
            self._send(json.dumps(payload).encode(), status, "application/json", headers)

        def _send(
            self,
            data: bytes,
            status: int,
            content_type: str,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _send_stream(self, stream: SseStream) -> None:
            # No length and no chunked encoding: the body ends when the connection closes,
            # right after [DONE] (the 0.28 client reads until then, reference §3.4).
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for line in stream:
                    self.wfile.write(line.encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                logger.info("client went away mid-stream")
            finally:
                stream.close()

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Many clients connect at once under load; the default backlog of 5 refuses some.
    request_queue_size = 1024


def serve(state: EngineServer, *, host: str, port: int) -> ThreadingHTTPServer:
    """A started-but-not-serving server; call `serve_forever()` on it."""
    return _Server((host, port), make_handler(state))
