"""Run a parsed completion or chat call on a backend and render OpenAI's JSON or SSE.

Used by `playground.services` (the /v1 API and the playground page) and by the engine server
(`serve_inference`), so the two can never drift apart.

A stream is *primed* before it is returned: its first delta is computed eagerly, so that a bad
parameter (a prompt over the context length, best_of with stream, a model without a chat
template) is still a plain 400 rather than an error chunk inside a 200 stream.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

from common.errors import ServiceError
from engine.generation import (
    GenerateRequest,
    GenerateResult,
    InvalidRequestError,
    StreamDelta,
    Usage,
)
from playground import protocol
from playground.backends import Backend, Target
from playground.protocol import ChatCall, CompletionCall

logger = logging.getLogger(__name__)

UsageHook = Callable[[Usage], None]


def as_api_error(exc: InvalidRequestError) -> ServiceError:
    return ServiceError(str(exc), param=exc.param)


class SseStream:
    """An iterator of SSE lines ending in `data: [DONE]`; `close()` releases the backend.

    Django's StreamingHttpResponse calls `close()` when the response ends or the client goes
    away, which closes the engine generator and so frees the model pool's lease at once.
    """

    def __init__(
        self,
        chunks: Iterator[dict[str, Any]],
        *,
        on_done: Callable[[], None] | None,
        closers: list[Callable[[], None]],
    ) -> None:
        self._lines = self._generate(chunks, on_done)
        self._closers = closers

    def _generate(
        self, chunks: Iterator[dict[str, Any]], on_done: Callable[[], None] | None
    ) -> Generator[str]:
        try:
            for chunk in chunks:
                yield protocol.sse(chunk)
        except Exception as exc:
            if not isinstance(exc, ServiceError | InvalidRequestError):
                logger.exception("stream failed")
            yield protocol.sse(protocol.error_chunk(exc))
        else:
            if on_done is not None:
                on_done()
        yield protocol.SSE_DONE

    def __iter__(self) -> SseStream:
        return self

    def __next__(self) -> str:
        return next(self._lines)

    def close(self) -> None:
        self._lines.close()
        for close in self._closers:
            close()


def _prime(deltas: Iterator[StreamDelta]) -> Iterator[StreamDelta]:
    """Compute the first delta now (raising parameter errors as ServiceError), then the rest."""
    try:
        first = next(deltas)
    except StopIteration:
        return iter(())
    except InvalidRequestError as exc:
        raise as_api_error(exc) from None
    return itertools.chain([first], deltas)


def run_completion(
    backend: Backend, target: Target, call: CompletionCall, *, on_usage: UsageHook | None = None
) -> dict[str, Any] | SseStream:
    completion_id, created = protocol.new_completion_id(), protocol.now()
    if not call.stream:
        try:
            results = _complete_all(backend, target, call.requests)
        except InvalidRequestError as exc:
            raise as_api_error(exc) from None
        if on_usage is not None:
            on_usage(protocol.total_usage(r.usage for r in results))
        return protocol.completion_json(
            completion_id=completion_id, created=created, model=target.name, results=results
        )
    # Every prompt's stream starts now (a batching backend runs them side by side); they are
    # sent one after the other.
    try:
        streams = [backend.stream(target, request) for request in call.requests]
    except InvalidRequestError as exc:
        raise as_api_error(exc) from None
    primed = _prime(streams[0])
    usage: list[Usage] = []
    chunks = protocol.completion_chunks(
        completion_id=completion_id,
        created=created,
        model=target.name,
        streams=[primed, *streams[1:]],
        n=call.requests[0].n,
        include_usage=call.include_usage,
        usage_out=usage,
    )
    done = (lambda: on_usage(protocol.total_usage(usage))) if on_usage is not None else None
    closers = [s.close for s in streams if hasattr(s, "close")]
    return SseStream(chunks, on_done=done, closers=closers)


def _complete_all(
    backend: Backend, target: Target, requests: list[GenerateRequest]
) -> list[GenerateResult]:
    many = getattr(backend, "complete_many", None)
    if many is not None and len(requests) > 1:
        return list(many(target, requests))
    return [backend.complete(target, request) for request in requests]


def run_chat(
    backend: Backend, target: Target, call: ChatCall, *, on_usage: UsageHook | None = None
) -> dict[str, Any] | SseStream:
    completion_id, created = protocol.new_chat_id(), protocol.now()
    if not call.stream or call.parse_tool_calls:
        try:
            result = backend.chat(target, call)
        except InvalidRequestError as exc:
            raise as_api_error(exc) from None
        if on_usage is not None:
            on_usage(result.usage)
        if call.stream:
            # A tool call can't be told from text until its block is complete: the finished
            # result goes out as chunks.
            chunks = protocol.chat_chunks_of_result(
                completion_id=completion_id,
                created=created,
                model=target.name,
                result=result,
                top_logprobs=call.top_logprobs,
                include_usage=call.include_usage,
            )
            return SseStream(chunks, on_done=None, closers=[])
        return protocol.chat_json(
            completion_id=completion_id,
            created=created,
            model=target.name,
            result=result,
            top_logprobs=call.top_logprobs,
            tools=call.parse_tool_calls,
        )
    try:
        deltas = backend.chat_stream(target, call)
    except InvalidRequestError as exc:
        raise as_api_error(exc) from None
    usage: list[Usage] = []
    chunks = protocol.chat_chunks(
        completion_id=completion_id,
        created=created,
        model=target.name,
        deltas=_prime(deltas),
        n=call.request.n,
        top_logprobs=call.top_logprobs,
        include_usage=call.include_usage,
        usage_out=usage,
    )
    done = (lambda: on_usage(protocol.total_usage(usage))) if on_usage is not None else None
    return SseStream(
        chunks, on_done=done, closers=[deltas.close] if hasattr(deltas, "close") else []
    )
