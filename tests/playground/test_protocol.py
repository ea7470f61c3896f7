"""The completions wire format: parsing names the bad param; rendering follows reference §6."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import ServiceError
from engine.generation import Choice, GenerateResult, Logprobs, StreamDelta, Usage
from playground import protocol

WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}


def parse_error(body: dict[str, Any], chat: bool = False) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        (protocol.parse_chat if chat else protocol.parse_completion)(body)
    return info.value


def test_parse_completion_applies_openai_defaults_and_nulls() -> None:
    # The 0.28 CLI sends unset flags as JSON null.
    body = {"model": "m", "prompt": "hi", "n": None, "max_tokens": None, "temperature": None,
            "top_p": None, "logprobs": None, "stop": None, "echo": True, "stream": False}  # fmt: skip

    call = protocol.parse_completion(body)

    (request,) = call.requests
    assert (request.max_tokens, request.temperature, request.top_p, request.n) == (16, 1.0, 1.0, 1)
    assert request.echo is True
    assert request.logprobs is None
    assert call.stream is False


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("text", [("text", None)]),
        (["a", "b"], [("a", None), ("b", None)]),
        ([1, 2, 3], [(None, [1, 2, 3])]),
        ([[1, 2], [3]], [(None, [1, 2]), (None, [3])]),
        (None, [("", None)]),
    ],
    ids=["string", "strings", "tokens", "token-arrays", "default"],
)
def test_parse_completion_accepts_every_prompt_shape(prompt: Any, expected: list[Any]) -> None:
    call = protocol.parse_completion({"model": "m", "prompt": prompt})

    assert [(r.prompt, r.prompt_tokens) for r in call.requests] == expected


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": "m", "prompt": [1, "a"]}, "prompt"),
        ({"model": "m", "prompt": []}, "prompt"),
        ({"model": "m", "temperature": 2.5}, "temperature"),
        ({"model": "m", "temperature": "hot"}, "temperature"),
        ({"model": "m", "top_p": 1.5}, "top_p"),
        ({"model": "m", "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "n": 0}, "n"),
        ({"model": "m", "logprobs": 6}, "logprobs"),
        ({"model": "m", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "m", "stop": [1]}, "stop"),
        ({"model": "m", "presence_penalty": 3}, "presence_penalty"),
        ({"model": "m", "frequency_penalty": -3}, "frequency_penalty"),
        ({"model": "m", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"model": "m", "logit_bias": {"5": 101}}, "logit_bias"),
        ({"model": "m", "best_of": 1, "n": 2}, "best_of"),
        ({"model": "m", "best_of": 3, "stream": True}, "best_of"),
        ({"model": "m", "echo": "yes"}, "echo"),
        ({"model": "m", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "m", "suffix": 3}, "suffix"),
    ],
)
def test_parse_completion_errors_name_the_param(body: dict[str, Any], param: str) -> None:
    error = parse_error(body)

    assert error.status_code == 400
    assert error.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 9}, "top_logprobs"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools[0].function"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": {"type": "function"}}, "tools"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0].type"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "weather", "arguments": "{"}}]}]}, "messages[1].tool_calls[0].function.arguments"),
        ({"model": "m", "messages": [{"role": "tool", "tool_call_id": "9", "content": "x"}]}, "messages[0].tool_call_id"),
    ],
)  # fmt: skip
def test_parse_chat_errors_name_the_param(body: dict[str, Any], param: str) -> None:
    assert parse_error(body, chat=True).param == param


def test_parse_chat_joins_text_parts_and_prefers_max_completion_tokens() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
        "max_tokens": 5,
        "max_completion_tokens": 7,
        "logprobs": True,
        "top_logprobs": 2,
    }  # fmt: skip

    call = protocol.parse_chat(body)

    assert call.messages == [{"role": "user", "content": "ab"}]
    assert call.request.max_tokens == 7
    assert call.max_tokens_given is True
    assert call.request.logprobs == 2


def test_chat_request_fits_an_unset_max_tokens_into_the_context() -> None:
    call = protocol.parse_chat({"model": "m", "messages": [{"role": "user", "content": "x"}]})

    request = protocol.chat_request(call, prompt="p", prompt_length=500, context=512)

    assert request.max_tokens == 12
    assert request.prompt == "p"
    assert request.add_special_tokens is False


def _result() -> GenerateResult:
    lp = Logprobs(["a", "b"], [-0.1, -2.0], [{"a": -0.1, "x": -3.0}, {"b": -2.0}], [0, 1])
    return GenerateResult([Choice("ab", 0, "length", lp)], Usage(3, 2))


def test_completion_json_has_the_reference_shape() -> None:
    body = protocol.completion_json(
        completion_id="cmpl-1", created=5, model="m", results=[_result(), _result()]
    )

    assert body["object"] == "text_completion"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert set(body["choices"][0]["logprobs"]) == {
        "tokens",
        "token_logprobs",
        "top_logprobs",
        "text_offset",
    }
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10}


def test_chat_logprobs_rank_top_alternatives_with_bytes() -> None:
    content = protocol.chat_logprobs(_result().choices[0].logprobs, top=1)

    assert content is not None
    first = content["content"][0]
    assert first["token"] == "a"
    assert first["bytes"] == [97]
    assert first["top_logprobs"] == [{"token": "a", "logprob": -0.1, "bytes": [97]}]


def test_chat_chunks_open_with_the_role_and_close_with_an_empty_delta() -> None:
    deltas = iter([StreamDelta(0, "hi"), StreamDelta(0, "!", "stop", usage=Usage(4, 2))])
    usage: list[Usage] = []

    chunks = list(
        protocol.chat_chunks(
            completion_id="c", created=1, model="m", deltas=deltas, n=1, top_logprobs=0,
            include_usage=True, usage_out=usage,
        )
    )  # fmt: skip

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"] for c in chunks[1:3]] == [{"content": "hi"}, {"content": "!"}]
    assert chunks[3]["choices"][0] == {
        "index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"
    }  # fmt: skip
    assert chunks[4]["choices"] == []
    assert chunks[4]["usage"]["total_tokens"] == 6


def test_parse_chat_takes_tools_and_the_messages_clients_send_back() -> None:
    # What the SDK hands back as `response.choices[0].message`, appended as it is.
    echoed = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "annotations": [],
        "audio": None,
        "function_call": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ],
    }
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "x"}, echoed, {"role": "tool", "tool_call_id": "c1", "content": "sun"}],
        "tools": [WEATHER],
        "parallel_tool_calls": False,
    }  # fmt: skip

    call = protocol.parse_chat(body)

    assert call.tools == [WEATHER]
    assert call.parallel_tool_calls is False
    assert call.parse_tool_calls is True
    assert protocol.parse_chat({**body, "tool_choice": "none"}).parse_tool_calls is False


def test_chat_json_turns_tool_call_blocks_into_tool_calls() -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    result = GenerateResult([Choice(text, 0, "stop")], Usage(3, 2))

    body = protocol.chat_json(
        completion_id="c", created=1, model="m", result=result, top_logprobs=0, tools=True
    )
    plain = protocol.chat_json(
        completion_id="c", created=1, model="m", result=result, top_logprobs=0
    )

    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
    assert plain["choices"][0]["message"]["content"] == text  # no tools asked: text as it is


def test_a_streamed_tool_call_arrives_whole_in_one_delta() -> None:
    text = '<tool_call>\n{"name": "weather", "arguments": {}}\n</tool_call>'
    result = GenerateResult([Choice(text, 0, "stop")], Usage(3, 2))

    chunks = list(
        protocol.chat_chunks_of_result(
            completion_id="c",
            created=1,
            model="m",
            result=result,
            top_logprobs=0,
            include_usage=True,
        )
    )

    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1]["tool_calls"][0]["index"] == 0
    assert deltas[1]["tool_calls"][0]["function"] == {"name": "weather", "arguments": "{}"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
