"""OpenAI's completions wire format: parse request bodies, render responses and SSE chunks.

Shared by the /v1 API (through `playground.services`) and by the engine server
(`manage.py serve_inference`), so both speak exactly the same dialect (reference §6).
Parsing raises `ServiceError` naming the offending param; range checks are the engine's own
(`GenerateRequest.__post_init__`), so the API and the engine cannot disagree on limits.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from common.errors import ServiceError
from common.ids import random_id
from common.redact import redact
from engine import chat_format
from engine.generation import (
    MAX_LOGPROBS,
    Choice,
    GenerateRequest,
    GenerateResult,
    InvalidRequestError,
    Logprobs,
    StreamDelta,
    Usage,
)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default (§6.1)
# OpenAI's chat default is "the rest of the context". On a CPU that can mean minutes for a
# model that never emits EOS, so an unset max_tokens means this many, clamped to the context.
CHAT_DEFAULT_MAX_TOKENS = 512
# n x prompts bounds the work of one request (OpenAI caps n at 128 too).
MAX_CHOICES = 128


@dataclass
class CompletionCall:
    """A parsed POST /v1/completions: one engine request per prompt."""

    model: str
    requests: list[GenerateRequest]
    stream: bool
    include_usage: bool


@dataclass
class ChatCall:
    """A parsed POST /v1/chat/completions. `request` has an empty placeholder prompt; the
    backend renders `messages` with the model's chat template and fills it in."""

    model: str
    messages: list[dict[str, Any]]
    request: GenerateRequest
    max_tokens_given: bool
    stream: bool
    include_usage: bool
    logprobs: bool
    top_logprobs: int
    # Tool definitions, rendered into the prompt as training renders them (engine.chat_format).
    tools: list[dict[str, Any]] | None = None
    parallel_tool_calls: bool = True
    # Whether `<tool_call>` blocks in the output become `tool_calls` (not with tool_choice none).
    parse_tool_calls: bool = False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _type_error(value: Any, kind: str, param: str) -> ServiceError:
    # OpenAI's own wording for schema errors.
    return ServiceError(f"{value!r} is not of type '{kind}' - '{param}'", param=param)


def _number(body: Mapping[str, Any], param: str, default: float) -> float:
    value = body.get(param)
    if value is None:
        return default
    if not _is_number(value):
        raise _type_error(value, "number", param)
    return float(value)


def _integer(body: Mapping[str, Any], param: str, default: int | None) -> int | None:
    value = body.get(param)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(value, "integer", param)
    return value


def _boolean(body: Mapping[str, Any], param: str) -> bool:
    value = body.get(param)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _type_error(value, "boolean", param)
    return value


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not model:
        raise ServiceError("you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise _type_error(model, "string", "model")
    return model


def _stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise ServiceError("stop must be a string or an array of up to 4 strings", param="stop")


def _logit_bias(body: Mapping[str, Any]) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise _type_error(bias, "object", "logit_bias")
    parsed: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token_id = int(key)
        except (TypeError, ValueError):
            raise ServiceError(
                f"logit_bias keys must be token ids, got {key!r}", param="logit_bias"
            )
        if not _is_number(value):
            raise ServiceError(
                f"logit_bias values must be numbers, got {value!r}", param="logit_bias"
            )
        parsed[token_id] = float(value)
    return parsed


def _include_usage(body: Mapping[str, Any], stream: bool) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not stream:
        raise ServiceError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
        )
    if not isinstance(options, dict):
        raise _type_error(options, "object", "stream_options")
    return _boolean(options, "include_usage")


def _prompts(value: Any) -> list[tuple[str | None, list[int] | None]]:
    """(text, tokens) per prompt, from a string, strings, a token array or token arrays."""
    if value is None:
        return [("", None)]  # OpenAI's default prompt: the start of a document
    if isinstance(value, str):
        return [(value, None)]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return [(v, None) for v in value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [(None, list(value))]
        if all(
            isinstance(v, list)
            and v
            and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
            for v in value
        ):
            return [(None, list(v)) for v in value]
    raise ServiceError(
        "prompt must be a string, an array of strings, an array of tokens or an array of "
        "token arrays",
        param="prompt",
    )


def _bounded_max_tokens(value: int | None) -> int | None:
    limit = settings.TUNERY_INFERENCE_MAX_TOKENS
    if value is not None and value > limit:
        raise ServiceError(
            f"max_tokens is {value}; this server allows at most {limit}.", param="max_tokens"
        )
    return value


def engine_request(**kwargs: Any) -> GenerateRequest:
    """Build a GenerateRequest, turning the engine's range errors into 400s naming the param."""
    try:
        return GenerateRequest(**kwargs)
    except InvalidRequestError as exc:
        raise ServiceError(str(exc), param=exc.param) from None


def _sampling(body: Mapping[str, Any], *, max_tokens: int | None) -> dict[str, Any]:
    return {
        "max_tokens": max_tokens,
        "temperature": _number(body, "temperature", 1.0),
        "top_p": _number(body, "top_p", 1.0),
        "n": _integer(body, "n", 1),
        "stop": _stop(body),
        "presence_penalty": _number(body, "presence_penalty", 0.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0),
        "logit_bias": _logit_bias(body),
        "seed": _integer(body, "seed", None),
    }


def parse_completion(body: Mapping[str, Any], *, model: str | None = None) -> CompletionCall:
    """Parse a /v1/completions body (`model` comes from the URL for /v1/engines/{e}/...)."""
    model = model or _model(body)
    stream = _boolean(body, "stream")
    suffix = body.get("suffix")
    if suffix is not None and not isinstance(suffix, str):
        raise _type_error(suffix, "string", "suffix")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise _type_error(user, "string", "user")
    max_tokens = _bounded_max_tokens(_integer(body, "max_tokens", COMPLETION_DEFAULT_MAX_TOKENS))
    params = _sampling(body, max_tokens=max_tokens)
    params.update(
        best_of=_integer(body, "best_of", None),
        logprobs=_integer(body, "logprobs", None),
        echo=_boolean(body, "echo"),
        suffix=suffix,
    )
    if stream and params["best_of"] is not None and params["best_of"] > params["n"]:
        raise ServiceError("best_of cannot be used with stream unless it equals n", param="best_of")
    prompts = _prompts(body.get("prompt"))
    if len(prompts) * max(params["n"] or 1, params["best_of"] or 1) > MAX_CHOICES:
        raise ServiceError(f"at most {MAX_CHOICES} choices per request (prompts x n)", param="n")
    requests = [engine_request(prompt=t, prompt_tokens=ids, **params) for t, ids in prompts]
    return CompletionCall(model, requests, stream, _include_usage(body, stream))


def _messages(
    value: Any, tools: list[dict[str, Any]] | None, parallel: bool
) -> list[dict[str, Any]]:
    """The request's messages, checked by the training schema (what a fine-tune was trained
    on is what it can be asked), with text parts joined; otherwise as sent."""
    if not isinstance(value, list) or not value:
        raise ServiceError("messages must be a non-empty array of messages", param="messages")
    limit = settings.TUNERY_INFERENCE_MAX_MESSAGES
    if len(value) > limit:
        # Each message is rendered and tokenized before anything runs: bound the work.
        raise ServiceError(
            f"messages has {len(value)} messages; this server accepts at most {limit}.",
            param="messages",
        )
    try:
        chat_format.normalise_request(value, tools, parallel_tool_calls=parallel)
    except chat_format.ChatFormatError as exc:
        raise ServiceError(exc.error.message, param=exc.error.param or "messages") from None
    return [
        {**m, "content": chat_format.content_text(m["content"])}
        if isinstance(m.get("content"), list)
        else dict(m)
        for m in value
    ]


def _tools(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]] | None, bool, bool]:
    """(tools, parallel_tool_calls, parse calls from the output) of a chat request."""
    tools = body.get("tools")
    functions = body.get("functions")
    if tools is None and functions is not None:
        # The deprecated spelling: the same functions, as tools.
        if not isinstance(functions, list):
            raise _type_error(functions, "array", "functions")
        tools = [{"type": "function", "function": f} for f in functions]
    if tools is not None and not isinstance(tools, list):
        raise _type_error(tools, "array", "tools")
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise _type_error(parallel, "boolean", "parallel_tool_calls")
    choice = body.get("tool_choice", body.get("function_call"))
    param = "tool_choice" if "tool_choice" in body else "function_call"
    if choice not in (None, "auto", "none"):
        raise ServiceError(
            f"{param} {json.dumps(choice)} is not supported: this server cannot force a tool "
            'call; use "auto" or "none"',
            param=param,
        )
    return tools or None, parallel is not False, bool(tools) and choice != "none"


def parse_chat(body: Mapping[str, Any]) -> ChatCall:
    model = _model(body)
    tools, parallel, parse_calls = _tools(body)
    messages = _messages(body.get("messages"), tools, parallel)
    stream = _boolean(body, "stream")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ServiceError(
            "only response_format {'type': 'text'} is supported", param="response_format"
        )
    # max_completion_tokens is the current name; max_tokens the deprecated one.
    max_tokens = _integer(body, "max_completion_tokens", None)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", None)
    max_tokens = _bounded_max_tokens(max_tokens)
    logprobs = _boolean(body, "logprobs")
    top_logprobs = _integer(body, "top_logprobs", 0) or 0
    if top_logprobs and not logprobs:
        raise ServiceError("top_logprobs requires logprobs to be true", param="top_logprobs")
    if not 0 <= top_logprobs <= MAX_LOGPROBS:
        raise ServiceError(
            f"top_logprobs must be between 0 and {MAX_LOGPROBS} on this server",
            param="top_logprobs",
        )
    default = min(CHAT_DEFAULT_MAX_TOKENS, settings.TUNERY_INFERENCE_MAX_TOKENS)
    params = _sampling(body, max_tokens=default if max_tokens is None else max_tokens)
    if params["n"] and params["n"] > MAX_CHOICES:
        raise ServiceError(f"n must be at most {MAX_CHOICES}", param="n")
    request = engine_request(
        prompt="", logprobs=top_logprobs if logprobs else None, add_special_tokens=False, **params
    )
    return ChatCall(
        model=model,
        messages=messages,
        request=request,
        max_tokens_given=max_tokens is not None,
        stream=stream,
        include_usage=_include_usage(body, stream),
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        tools=tools,
        parallel_tool_calls=parallel,
        parse_tool_calls=parse_calls,
    )


def chat_request(
    call: ChatCall, *, prompt: str, prompt_length: int, context: int | None
) -> GenerateRequest:
    """The engine request for a rendered chat prompt; an unset max_tokens fits the context."""
    max_tokens = call.request.max_tokens
    if not call.max_tokens_given and context is not None:
        max_tokens = max(1, min(max_tokens, context - prompt_length))
    return engine_request(**{**_fields(call.request), "prompt": prompt, "max_tokens": max_tokens})


def _fields(request: GenerateRequest) -> dict[str, Any]:
    return {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}


# --- rendering --------------------------------------------------------------------------


def new_completion_id() -> str:
    return random_id("cmpl-", 24)


def new_chat_id() -> str:
    return random_id("chatcmpl-", 24)


def sse(payload: Mapping[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def total_usage(usages: Iterable[Usage]) -> Usage:
    prompt = completion = 0
    for usage in usages:
        prompt += usage.prompt_tokens
        completion += usage.completion_tokens
    return Usage(prompt, completion)


def completion_json(
    *, completion_id: str, created: int, model: str, results: list[GenerateResult]
) -> dict[str, Any]:
    choices = []
    for prompt_index, result in enumerate(results):
        width = len(result.choices)
        for choice in result.choices:
            choices.append(
                {
                    "text": choice.text,
                    "index": prompt_index * width + choice.index,
                    "logprobs": choice.logprobs.to_dict() if choice.logprobs else None,
                    "finish_reason": choice.finish_reason,
                }
            )
    usage = total_usage(r.usage for r in results)
    return {
        "id": completion_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": usage.to_dict(),
    }


def completion_chunks(
    *,
    completion_id: str,
    created: int,
    model: str,
    streams: Iterable[Iterator[StreamDelta]],
    n: int,
    include_usage: bool,
    usage_out: list[Usage],
) -> Iterator[dict[str, Any]]:
    """Chunk objects for the deltas of each prompt's stream, in turn; the caller adds [DONE].

    Each prompt's final usage is appended to `usage_out` as it arrives (for accounting).
    """
    head = {"id": completion_id, "object": "text_completion", "created": created, "model": model}
    for prompt_index, deltas in enumerate(streams):
        for delta in deltas:
            if delta.usage is not None:
                usage_out.append(delta.usage)
            if not (
                delta.text or delta.finish_reason or (delta.logprobs and delta.logprobs.tokens)
            ):
                continue
            choice = {
                "text": delta.text,
                "index": prompt_index * n + delta.index,
                "logprobs": delta.logprobs.to_dict() if delta.logprobs else None,
                "finish_reason": delta.finish_reason,
            }
            chunk: dict[str, Any] = {**head, "choices": [choice]}
            if include_usage:
                chunk["usage"] = None
            yield chunk
    if include_usage:
        yield {**head, "choices": [], "usage": total_usage(usage_out).to_dict()}


def _token_entry(token: str, logprob: float | None) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(logprobs: Logprobs | None, top: int) -> dict[str, Any] | None:
    """The chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}, ...]}."""
    if logprobs is None:
        return None
    content = []
    for token, value, alternatives in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        entry = _token_entry(token, value)
        ranked = sorted((alternatives or {}).items(), key=lambda kv: -kv[1])[:top]
        entry["top_logprobs"] = [_token_entry(t, v) for t, v in ranked]
        content.append(entry)
    return {"content": content}


def new_tool_call_id() -> str:
    return random_id("call_", 24)


def chat_message(choice: Choice, *, tools: bool) -> tuple[dict[str, Any], str]:
    """The assistant message of a choice and its finish_reason.

    With tools, `<tool_call>` blocks in the text (the fallback rendering's format, and the
    Hermes/Qwen templates') become `tool_calls`, as OpenAI returns them. A remote backend may
    have parsed them already (`choice.tool_calls`).
    """
    content: str | None = choice.text
    calls = choice.tool_calls
    if calls is None and tools:
        parsed = chat_format.parse_tool_calls(choice.text)
        if parsed is not None:
            content, found = parsed
            calls = [
                {"id": new_tool_call_id(), "type": "function", "function": function}
                for function in found
            ]
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    finish = choice.finish_reason
    if calls:
        message["content"] = content or None
        message["tool_calls"] = calls
        finish = "tool_calls" if finish == "stop" else finish
    return message, finish


def chat_json(
    *,
    completion_id: str,
    created: int,
    model: str,
    result: GenerateResult,
    top_logprobs: int,
    tools: bool = False,
) -> dict[str, Any]:
    choices = []
    for choice in result.choices:
        message, finish = chat_message(choice, tools=tools)
        choices.append(
            {
                "index": choice.index,
                "message": message,
                "logprobs": chat_logprobs(choice.logprobs, top_logprobs),
                "finish_reason": finish,
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": choices,
        "usage": result.usage.to_dict(),
    }


def chat_chunks_of_result(
    *,
    completion_id: str,
    created: int,
    model: str,
    result: GenerateResult,
    top_logprobs: int,
    include_usage: bool,
) -> Iterator[dict[str, Any]]:
    """A finished chat result as chunks: how a request with tools is streamed, since a call
    can only be told from text once its block is complete."""
    head = {"id": completion_id, "object": "chat.completion.chunk", "created": created}
    head |= {"model": model, "system_fingerprint": None}
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], logprobs: Any, finish: str | None) -> Any:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "choices": [choice], **extra}

    for choice in result.choices:
        message, finish = chat_message(choice, tools=True)
        yield chunk(choice.index, {"role": "assistant", "content": ""}, None, None)
        if message["content"]:
            logprobs = chat_logprobs(choice.logprobs, top_logprobs)
            yield chunk(choice.index, {"content": message["content"]}, logprobs, None)
        if message.get("tool_calls"):
            calls = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
            yield chunk(choice.index, {"tool_calls": calls}, None, None)
        yield chunk(choice.index, {}, None, finish)
    if include_usage:
        usage = {"usage": result.usage.to_dict()}
        yield (
            {key: value for key, value in head.items() if key != "system_fingerprint"}
            | {"choices": []}
            | usage
        )


def chat_chunks(
    *,
    completion_id: str,
    created: int,
    model: str,
    deltas: Iterator[StreamDelta],
    n: int,
    top_logprobs: int,
    include_usage: bool,
    usage_out: list[Usage],
) -> Iterator[dict[str, Any]]:
    """chat.completion.chunk objects: a role delta per choice, content deltas, then an empty
    delta carrying finish_reason, as OpenAI streams them (reference §6.3)."""
    head = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
    }
    extra: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(
        index: int, delta: dict[str, Any], logprobs: Any, finish: str | None
    ) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {**head, "system_fingerprint": None, "choices": [choice], **extra}

    for index in range(n):
        yield chunk(index, {"role": "assistant", "content": ""}, None, None)
    for delta in deltas:
        if delta.usage is not None:
            usage_out.append(delta.usage)
        if delta.text or (delta.logprobs and delta.logprobs.tokens):
            yield chunk(
                delta.index,
                {"content": delta.text},
                chat_logprobs(delta.logprobs, top_logprobs),
                None,
            )
        if delta.finish_reason:
            yield chunk(delta.index, {}, None, delta.finish_reason)
    if include_usage:
        yield {**head, "choices": [], "usage": total_usage(usage_out).to_dict()}


def now() -> int:
    return int(time.time())


def error_chunk(exc: Exception) -> dict[str, Any]:
    """A mid-stream failure: clients raise a data chunk with an "error" key (reference §9.4)."""
    if isinstance(exc, ServiceError):
        return {
            "error": {
                "message": redact(exc.message),
                "type": exc.type,
                "param": exc.param,
                "code": exc.code,
            }
        }
    if isinstance(exc, InvalidRequestError):
        return {
            "error": {
                "message": redact(str(exc)),
                "type": "invalid_request_error",
                "param": exc.param,
                "code": None,
            }
        }
    return {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
