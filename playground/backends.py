"""Inference backends: where a completion actually runs.

`local` runs the engine in this process: one `engine.pool.ModelPool` per process holds the
loaded base models (LRU-bounded by TUNERY_INFERENCE_MAX_BASES) and swaps LoRA adapters on
them. `remote` forwards to an OpenAI-compatible server that hot-loads LoRA adapters the way
vLLM does (`POST /v1/load_lora_adapter`); `manage.py serve_inference` is such a server,
built on the local backend.

Both return the engine's dataclasses (`GenerateResult`, `StreamDelta`), so `playground.inference`
renders OpenAI's JSON the same way whichever backend ran. Django owns the registry and access
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
import torch
from django.conf import settings

from config.api import ApiError
from engine.generation import (
    Choice,
    GenerateRequest,
    GenerateResult,
    Logprobs,
    StreamDelta,
    Usage,
    chat_prompt,
    generate,
    generate_stream,
)
from engine.pool import ModelPool
from playground.protocol import ChatCall, chat_request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """What to run a request on, already resolved and authorised.

    `name` is echoed back as the response's `model`. `base_dir` holds the weights to load (a
    full fine-tune's own directory); the remote backend needs it only for full fine-tunes.
    """

    name: str
    base_name: str
    base_dir: Path | None
    adapter_dir: Path | None = None
    full_weights: bool = False


class Backend(Protocol):
    def complete(self, target: Target, request: GenerateRequest) -> GenerateResult: ...

    def stream(self, target: Target, request: GenerateRequest) -> Iterator[StreamDelta]: ...

    def chat(self, target: Target, call: ChatCall) -> GenerateResult: ...

    def chat_stream(self, target: Target, call: ChatCall) -> Iterator[StreamDelta]: ...

    def unload_adapter(self, *, name: str, adapter_dir: Path) -> None: ...


# --- local ---------------------------------------------------------------------------------


def default_device() -> tuple[str, torch.dtype]:
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # float32 on CPU: without native bf16 instructions torch emulates bf16 matmuls (slow).
    return "cpu", torch.float32


def load_for_inference(model_dir: str) -> tuple[Any, Any]:
    from engine.models import load_model_and_tokenizer

    device, dtype = default_device()
    return load_model_and_tokenizer(model_dir, device=device, dtype=dtype)


def _context_length(model: Any) -> int | None:
    value = getattr(model.config, "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


class LocalBackend:
    """The engine in-process. Thread-safe: the pool serialises generations per base."""

    def __init__(self, *, max_bases: int, loader: Any = load_for_inference) -> None:
        self.pool = ModelPool(loader, max_bases=max_bases)

    @staticmethod
    def _key(target: Target) -> str:
        if target.base_dir is None:
            raise ValueError("the local backend needs the base model's directory")
        return str(target.base_dir)

    def complete(self, target: Target, request: GenerateRequest) -> GenerateResult:
        with self.pool.lease(self._key(target), target.adapter_dir) as (model, tokenizer):
            return generate(model, tokenizer, request)

    def stream(self, target: Target, request: GenerateRequest) -> Iterator[StreamDelta]:
        # The lease (the base's lock) is held until the stream is consumed or closed.
        with self.pool.lease(self._key(target), target.adapter_dir) as (model, tokenizer):
            yield from generate_stream(model, tokenizer, request)

    @staticmethod
    def _chat_request(model: Any, tokenizer: Any, call: ChatCall) -> GenerateRequest:
        prompt = chat_prompt(tokenizer, call.messages)
        length = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return chat_request(
            call, prompt=prompt, prompt_length=length, context=_context_length(model)
        )

    def chat(self, target: Target, call: ChatCall) -> GenerateResult:
        with self.pool.lease(self._key(target), target.adapter_dir) as (model, tokenizer):
            return generate(model, tokenizer, self._chat_request(model, tokenizer, call))

    def chat_stream(self, target: Target, call: ChatCall) -> Iterator[StreamDelta]:
        with self.pool.lease(self._key(target), target.adapter_dir) as (model, tokenizer):
            request = self._chat_request(model, tokenizer, call)
            yield from generate_stream(model, tokenizer, request)

    def unload_adapter(self, *, name: str, adapter_dir: Path) -> None:
        self.pool.unload_adapter(adapter_dir)


# --- remote --------------------------------------------------------------------------------


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


class RemoteBackend:
    """Forwards to an OpenAI-compatible server (vLLM, or `manage.py serve_inference`).

    Base models are addressed by their registered name (the server's served model name); a
    LoRA fine-tune is loaded once under its own name with `POST /v1/load_lora_adapter`, whose
    `lora_path` must be readable by the server (shared storage). A full fine-tune is addressed
    by its weights directory, which `serve_inference` accepts and vLLM needs to serve by name.
    """

    def __init__(self, *, base_url: str, timeout: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self._loaded: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    # plumbing

    def _post(self, path: str, body: dict[str, Any], *, stream: bool = False) -> requests.Response:
        url = f"{self.base_url}{path}"
        try:
            response = self.session.post(url, json=body, stream=stream, timeout=self.timeout)
        except requests.RequestException as exc:
            logger.warning("inference server %s unreachable: %s", url, exc)
            raise ApiError(
                "The inference server is unavailable. Please try again later.",
                status=503,
                type="server_error",
            ) from None
        if response.status_code >= 400:
            raise self._error(response)
        return response

    @staticmethod
    def _error(response: requests.Response) -> ApiError:
        try:
            error = response.json()["error"]
            return ApiError(
                str(error.get("message") or "inference server error"),
                status=response.status_code,
                param=error.get("param"),
                code=error.get("code"),
                type=error.get("type") or "invalid_request_error",
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            status = response.status_code if response.status_code < 500 else 502
            return ApiError(
                f"inference server error: {response.text[:200]}", status=status, type="server_error"
            )

    def _model(self, target: Target) -> str:
        if target.adapter_dir is not None:
            self._load_adapter(target)
            return target.name
        if target.full_weights and target.base_dir is not None:
            return str(target.base_dir)
        return target.base_name

    def _load_adapter(self, target: Target, *, force: bool = False) -> None:
        key = (target.name, str(target.adapter_dir))
        with self._lock:
            if key in self._loaded and not force:
                return
        body = {
            "lora_name": target.name,
            "lora_path": str(target.adapter_dir),
            "base_model": target.base_name,  # serve_inference serves several bases; vLLM ignores it
        }
        try:
            self._post("/load_lora_adapter", body)
        except ApiError as exc:
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
        except ApiError as exc:
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
                    raise ApiError(
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
        return body

    def chat(self, target: Target, call: ChatCall) -> GenerateResult:
        data = self._call(target, "/chat/completions", self._chat_body(call), stream=False).json()
        choices = [
            Choice(
                c["message"].get("content") or "",
                c["index"],
                c["finish_reason"],
                _logprobs_from_chat_json(c.get("logprobs")),
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
        except ApiError as exc:
            # Not loaded there (404) is fine; an unreachable server forgets it on restart.
            logger.info("unloading %s on the inference server: %s", name, exc.message)


# --- the process-wide backend ---------------------------------------------------------------

_backends: dict[tuple[str, str, int], Backend] = {}
_backends_lock = threading.Lock()


def get_backend() -> Backend:
    """The backend the settings select; one per process (and per configuration, for tests)."""
    kind = settings.TUNERY_INFERENCE_BACKEND
    key = (kind, settings.TUNERY_INFERENCE_URL, settings.TUNERY_INFERENCE_MAX_BASES)
    with _backends_lock:
        backend = _backends.get(key)
        if backend is None:
            if kind == "remote":
                backend = RemoteBackend(base_url=settings.TUNERY_INFERENCE_URL)
            else:
                backend = LocalBackend(max_bases=settings.TUNERY_INFERENCE_MAX_BASES)
            _backends[key] = backend
        return backend


def reset_backends() -> None:
    """Forget every backend (tests): the next request starts with an empty pool."""
    with _backends_lock:
        _backends.clear()
