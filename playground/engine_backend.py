"""The inference service's backend: the engine's continuous-batching pool, in this process.

Only `manage.py serve_inference` (playground/server.py) uses it; the web tier reaches it over
HTTP (`playground.backends.HttpBackend`). Every request is submitted to the base's scheduler
(`engine.batching`) and waits on its ticket; while it waits, the handler's `gone` check is
polled, so a request whose client disconnected leaves the batch at the next step.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from common.errors import ServiceError
from engine.batching import BatchSettings, Cancelled, QueueFull, Ticket
from engine.generation import (
    GenerateRequest,
    GenerateResult,
    StreamDelta,
    chat_prompt,
)
from engine.pool import ModelPool
from playground.backends import Target
from playground.protocol import ChatCall, chat_request

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_device(dtype: str = "auto") -> tuple[str, torch.dtype]:
    """The device and dtype to serve in; `dtype` "auto" picks the device's best default."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype != "auto":
        return device, DTYPES[dtype]
    if device == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # On a CPU with native bf16 instructions (AVX512-BF16, AMX) bfloat16 halves the weights
    # read per decode step and makes extra batch rows nearly free (docs/benchmarks/serving.md:
    # an 8-row step 1.2x a 1-row one, against 2.1x in float32). Without them torch emulates
    # bf16 matmuls (slow): float32.
    return device, torch.bfloat16 if native_bf16_cpu() else torch.float32


def native_bf16_cpu() -> bool:
    """An x86 CPU with AVX512-BF16 or AMX-BF16 (Linux: /proc/cpuinfo's flags)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def load_for_inference(model_dir: str, dtype: str = "auto") -> tuple[Any, Any]:
    from engine.models import load_model_and_tokenizer

    device, torch_dtype = default_device(dtype)
    return load_model_and_tokenizer(model_dir, device=device, dtype=torch_dtype)


class EngineBackend:
    """The `Backend` protocol on a `ModelPool`. Thread-safe: the pool's schedulers batch."""

    def __init__(
        self,
        *,
        max_bases: int,
        settings: BatchSettings | None = None,
        max_queue: int = 64,
        loader: Callable[[str], tuple[Any, Any]] = load_for_inference,
    ) -> None:
        self.pool = ModelPool(loader, max_bases=max_bases, settings=settings, max_queue=max_queue)
        self._local = threading.local()
        self._tokenizers: dict[str, tuple[Any, Any]] = {}  # base -> (the pool's, our copy)
        self._tokenizers_lock = threading.Lock()

    @contextmanager
    def watching(self, gone: Callable[[], bool]) -> Iterator[None]:
        """Cancel this thread's requests when `gone()` says their client went away."""
        self._local.gone = gone
        try:
            yield
        finally:
            self._local.gone = None

    @staticmethod
    def _key(target: Target) -> str:
        if target.base_dir is None:
            raise ValueError("the engine backend needs the base model's directory")
        return str(target.base_dir)

    def _submit(self, target: Target, request: GenerateRequest, *, stream: bool) -> Ticket:
        try:
            return self.pool.submit(self._key(target), target.adapter_dir, request, stream=stream)
        except QueueFull as exc:
            raise ServiceError(
                "The inference service is at capacity. Please retry after a short wait.",
                status=429,
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": str(exc.retry_after)},
            ) from None

    def _gone(self) -> Callable[[], bool] | None:
        return getattr(self._local, "gone", None)

    def complete(self, target: Target, request: GenerateRequest) -> GenerateResult:
        ticket = self._submit(target, request, stream=False)
        try:
            return ticket.result(gone=self._gone())
        except Cancelled:
            raise ClientGone() from None

    def complete_many(
        self, target: Target, requests: list[GenerateRequest]
    ) -> list[GenerateResult]:
        """Several prompts of one call, submitted together so that they share batches."""
        tickets = [self._submit(target, request, stream=False) for request in requests]
        try:
            return [ticket.result(gone=self._gone()) for ticket in tickets]
        except BaseException as exc:
            for ticket in tickets:
                ticket.cancel()
            if isinstance(exc, Cancelled):
                raise ClientGone() from None
            raise

    def stream(self, target: Target, request: GenerateRequest) -> Iterator[StreamDelta]:
        ticket = self._submit(target, request, stream=True)
        return _stop_quietly(ticket.deltas(gone=self._gone()))

    def _chat_request(self, target: Target, call: ChatCall) -> GenerateRequest:
        key = self._key(target)
        tokenizer, context = self.pool.model_info(key)
        with self._tokenizers_lock:
            # A copy of its own: a fast tokenizer used from two threads at once can fail
            # ("Already borrowed"), and the scheduler's thread tokenizes with the original.
            own = self._tokenizers.get(key)
            if own is None or own[0] is not tokenizer:
                own = self._tokenizers[key] = (tokenizer, copy.deepcopy(tokenizer))
            prompt = chat_prompt(
                own[1], call.messages, call.tools, parallel_tool_calls=call.parallel_tool_calls
            )
            length = len(own[1](prompt, add_special_tokens=False)["input_ids"])
        return chat_request(call, prompt=prompt, prompt_length=length, context=context)

    def chat(self, target: Target, call: ChatCall) -> GenerateResult:
        return self.complete(target, self._chat_request(target, call))

    def chat_stream(self, target: Target, call: ChatCall) -> Iterator[StreamDelta]:
        return self.stream(target, self._chat_request(target, call))

    def unload_adapter(self, *, name: str, adapter_dir: Path) -> None:
        self.pool.unload_adapter(adapter_dir)


class ClientGone(Exception):
    """The client disconnected while its request ran; there is no one to answer."""


def _stop_quietly(deltas: Iterator[StreamDelta]) -> Iterator[StreamDelta]:
    try:
        yield from deltas
    except Cancelled:
        return
