"""Inference backends: how the web tier reaches the process that runs models.

The web process never runs a model. Both backends are HTTP clients of an OpenAI-compatible
server that hot-loads LoRA adapters the way vLLM does (`POST /v1/load_lora_adapter`):

* `local`: Tunery's own inference service (`manage.py serve_inference`, one per device),
  which batches concurrent requests continuously across prompts and adapters
  (`engine.batching`). It loads bases from their source, which is sent as the model name,
  so it needs no database.
* `remote`: another such server, vLLM in production. Bases are addressed by their
  registered name, which must be the server's served model name.

Both return the engine's dataclasses (`GenerateResult`, `StreamDelta`), so `playground.inference`
renders OpenAI's JSON the same way whichever server ran. Django owns the registry and access
control in both modes: a backend only ever sees an already-authorised `Target`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from django.conf import settings

from common import artifacts
from common.errors import ServiceError
from engine.generation import (
    Choice,
    GenerateRequest,
    GenerateResult,
    Logprobs,
    StreamDelta,
    Usage,
)
from playground.protocol import ChatCall

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to run a request on, already resolved and authorised.

    `name` is echoed back as the response's `model`. `base_source` is where the base's weights
    come from (a model directory, a .gguf or `package:NAME`); `base_dir` holds a full
    fine-tune's own weights, which replace the base.
    """

    name: str
    base_name: str
    base_source: str | None = None
    base_dir: Path | None = None
    adapter_dir: Path | None = None
    full_weights: bool = False


class Backend(Protocol):
    def complete(self, target: Target, request: GenerateRequest) -> GenerateResult: ...

    def stream(self, target: Target, request: GenerateRequest) -> Iterator[StreamDelta]: ...

    def chat(self, target: Target, call: ChatCall) -> GenerateResult: ...

    def chat_stream(self, target: Target, call: ChatCall) -> Iterator[StreamDelta]: ...

    def unload_adapter(self, *, name: str, adapter_dir: Path) -> None: ...


# --- the HTTP client --------------------------------------------------------------------------------


def _logprobs_from_json(data: dict[str, Any] | None) -> Logprobs | None:
    if not data:
        return None
    return Logprobs(
        tokens=list(data.get("tokens") or []),
        token_logprobs=list(data.get("token_logprobs") or []),
        top_logprobs=list(data.get("top_logprobs") or []),
        text_offset=list(data.get("text_offset") or []),
    )


def _logprobs_from_chat_json(data: dict[str, Any] | None, offset: int = 0) -> Logprobs | None:
    """Chat's {"content": [{token, logprob, top_logprobs}]} back into the completions shape."""
    if not data or data.get("content") is None:
        return None
    lp = Logprobs()
    for entry in data["content"]:
        lp.tokens.append(entry["token"])
        lp.token_logprobs.append(entry["logprob"])
        lp.top_logprobs.append({t["token"]: t["logprob"] for t in entry.get("top_logprobs", [])})
        lp.text_offset.append(offset)
        offset += len(entry["token"])
    return lp


def _usage_from_json(data: dict[str, Any] | None) -> Usage | None:
    if not data:
        return None
    return Usage(int(data["prompt_tokens"]), int(data["completion_tokens"]))


class HttpBackend:
    """Forwards to an OpenAI-compatible server: Tunery's inference service or vLLM.

    A base is addressed by its source (`by_source`, Tunery's service) or by its registered
    name (vLLM's served model name). A LoRA fine-tune is loaded once under its own name with
    `POST /v1/load_lora_adapter`, whose `lora_path` must be readable by the server (shared
    storage). A full fine-tune is addressed by its weights directory, which the service
    accepts and vLLM needs to serve by name.
    """

    def __init__(self, *, base_url: str, by_source: bool, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.by_source = by_source
        self.timeout = timeout
        self.session = requests.Session()
        # One connection per concurrent request: the service batches them, so don't queue here.
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=256)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._loaded: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # plumbing

    def _post(self, path: str, body: dict[str, Any], *, stream: bool = False) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.post(url, json=body, stream=stream, timeout=self.timeout)
        except requests.RequestException as exc:
            logger.warning("inference server %s unreachable: %s", url, exc)
            raise ServiceError(
                "The inference server is unavailable. Please try again later.",
                status=503,
                type="server_error",
            ) from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: requests.Response) -> ServiceError:
        # A full queue's 429 keeps its Retry-After, so the client's retry waits as told.
        headers = {}
        if response.status_code == 429 and "Retry-After" in response.headers:
            headers["Retry-After"] = response.headers["Retry-After"]
        try:
            error = response.json()["error"]
            # vLLM puts the HTTP status in `code` and its exception name in `type`; OpenAI's
            # envelope has a string code and its own types.
            code = error.get("code") if isinstance(error.get("code"), str) else None
            kind = error.get("type")
            if kind not in ("invalid_request_error", "rate_limit_error", "server_error"):
                kind = "server_error" if response.status_code >= 500 else "invalid_request_error"
            return ServiceError(
                str(error.get("message") or "inference server error"),
                status=response.status_code,
                param=error.get("param"),
                code=code,
                type=kind,
                headers=headers,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            status = response.status_code if response.status_code < 500 else 502
            return ServiceError(
                f"inference server error: {response.text[:200]}", status=status, type="server_error"
            )

    def _base(self, target: Target) -> str:
        if self.by_source and target.base_source:
            return target.base_source
        return target.base_name

    def _model(self, target: Target) -> str:
        if target.adapter_dir is not None:
            self._load_adapter(target)
            return target.name
        if target.full_weights and target.base_dir is not None:
            return artifacts.portable(target.base_dir)
        return self._base(target)

    def _load_adapter(self, target: Target, *, force: bool = False) -> None:
        assert target.adapter_dir is not None  # only fine-tunes with an adapter come here
        key = (target.name, str(target.adapter_dir))
        with self._lock:
            if key in self._loaded and not force:
                return
        body = {
            "lora_name": target.name,
            # `store:<key>` when the adapter is in a remote artifact store: the service
            # fetches it into its own cache (it shares no disk with this host).
            "lora_path": artifacts.portable(target.adapter_dir),
            # The service serves several bases; vLLM (one base) ignores it.
            "base_model": self._base(target),
        }
        try:
            self._post("/load_lora_adapter", body)
        except ServiceError as exc:
            # vLLM answers 400 when the adapter is already loaded (e.g. after our restart).
            if "already" not in exc.message:
                raise
        with self._lock:
            self._loaded.add(key)

    def _call(
        self, target: Target, path: str, body: dict[str, Any], *, stream: bool
    ) -> requests.Response:
        body = {**body, "model": self._model(target)}
        try:
            return self._post(path, body, stream=stream)
        except ServiceError as exc:
            if exc.status_code != 404 or target.adapter_dir is None:
                raise
            # The server restarted and forgot the adapter: load it again, once.
            self._load_adapter(target, force=True)
            return self._post(path, body, stream=stream)

    @staticmethod
    def _events(response: requests.Response) -> Iterator[dict[str, Any]]:
        with response:
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                chunk = json.loads(payload)
                if "error" in chunk:
                    error = chunk["error"]
                    raise ServiceError(
                        error.get("message", "inference server error"),
                        param=error.get("param"),
                        code=error.get("code"),
                        type=error.get("type") or "server_error",
                    )
                yield chunk

    # completions

    @staticmethod
    def _completion_body(request: GenerateRequest) -> dict[str, Any]:
        return {
            "prompt": request.prompt if request.prompt is not None else request.prompt_tokens,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
            "best_of": request.best_of,
            "stop": request.stop or None,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
            "logit_bias": {str(k): v for k, v in request.logit_bias.items()} or None,
            "logprobs": request.logprobs,
            "echo": request.echo,
            "suffix": request.suffix,
            "seed": request.seed,
        }

    def complete(self, target: Target, request: GenerateRequest) -> GenerateResult:
        data = self._call(
            target, "/completions", self._completion_body(request), stream=False
        ).json()
        choices = [
            Choice(
                c["text"], c["index"], c["finish_reason"], _logprobs_from_json(c.get("logprobs"))
            )
            for c in data["choices"]
        ]
        return GenerateResult(choices, _usage_from_json(data["usage"]) or Usage(0, 0))

    def stream(self, target: Target, request: GenerateRequest) -> Iterator[StreamDelta]:
        body = {
            **self._completion_body(request),
            "stream": True,
            "stream_options": {"include_usage": True},  # for our own usage accounting
        }
        response = self._call(target, "/completions", body, stream=True)
        for chunk in self._events(response):
            for c in chunk.get("choices") or []:
                lp = _logprobs_from_json(c.get("logprobs"))
                yield StreamDelta(c["index"], c.get("text") or "", c.get("finish_reason"), lp)
            usage = _usage_from_json(chunk.get("usage"))
            if usage is not None:
                yield StreamDelta(0, "", None, None, usage)

    # chat

    @staticmethod
    def _chat_body(call: ChatCall) -> dict[str, Any]:
        request = call.request
        body: dict[str, Any] = {
            "messages": call.messages,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "n": request.n,
            "stop": request.stop or None,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
            "logit_bias": {str(k): v for k, v in request.logit_bias.items()} or None,
            "seed": request.seed,
            "logprobs": call.logprobs,
            "top_logprobs": call.top_logprobs if call.logprobs else None,
        }
        if call.max_tokens_given:
            body["max_tokens"] = request.max_tokens
        if call.tools:
            # The server renders them with the model's template: ours (serve_inference) as
            # training did; vLLM natively, so only for templates with tool support.
            body["tools"] = call.tools
            body["parallel_tool_calls"] = call.parallel_tool_calls
            body["tool_choice"] = "auto" if call.parse_tool_calls else "none"
        return body

    def chat(self, target: Target, call: ChatCall) -> GenerateResult:
        data = self._call(target, "/chat/completions", self._chat_body(call), stream=False).json()
        choices = [
            Choice(
                c["message"].get("content") or "",
                c["index"],
                c["finish_reason"],
                _logprobs_from_chat_json(c.get("logprobs")),
                tool_calls=c["message"].get("tool_calls") or None,
            )
            for c in data["choices"]
        ]
        return GenerateResult(choices, _usage_from_json(data["usage"]) or Usage(0, 0))

    def chat_stream(self, target: Target, call: ChatCall) -> Iterator[StreamDelta]:
        body = {**self._chat_body(call), "stream": True, "stream_options": {"include_usage": True}}
        response = self._call(target, "/chat/completions", body, stream=True)
        offsets: dict[int, int] = {}
        for chunk in self._events(response):
            for c in chunk.get("choices") or []:
                index = c["index"]
                text = (c.get("delta") or {}).get("content") or ""
                lp = _logprobs_from_chat_json(c.get("logprobs"), offsets.get(index, 0))
                offsets[index] = offsets.get(index, 0) + len(text)
                yield StreamDelta(index, text, c.get("finish_reason"), lp)
            usage = _usage_from_json(chunk.get("usage"))
            if usage is not None:
                yield StreamDelta(0, "", None, None, usage)

    def unload_adapter(self, *, name: str, adapter_dir: Path) -> None:
        with self._lock:
            self._loaded.discard((name, str(adapter_dir)))
        try:
            self._post("/unload_lora_adapter", {"lora_name": name})
        except ServiceError as exc:
            # Not loaded there (404) is fine; an unreachable server forgets it on restart.
            logger.info("unloading %s on the inference server: %s", name, exc.message)


# --- the process-wide backend ---------------------------------------------------------------

_backends: dict[tuple[str, str], Backend] = {}
_backends_lock = threading.Lock()


def get_backend() -> Backend:
    """The backend the settings select; one per process (and per configuration, for tests)."""
    kind = settings.TUNERY_INFERENCE_BACKEND
    key = (kind, settings.TUNERY_INFERENCE_URL)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            backend = HttpBackend(
                base_url=settings.TUNERY_INFERENCE_URL,
                by_source=kind == "local",
                timeout=settings.TUNERY_INFERENCE_TIMEOUT,
            )
            _backends[key] = backend
        return backend


def reset_backends() -> None:
    """Forget every backend (tests)."""
    with _backends_lock:
        _backends.clear()
