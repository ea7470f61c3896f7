"""POST /v1/completions and /v1/chat/completions on the local backend with a tiny model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from pytest_django import Settings

from accounts.models import ApiKey
from models_app.models import BaseModel, UsageRecord
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona, streamed
from tests.playground.support import TINY_ALIAS, TINY_BASE, MakeFineTune, TinyDirs, ft_name


def post(client: Client, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, json.dumps(body), content_type="application/json")


def complete(owner: Persona, **body: Any) -> dict[str, Any]:
    response = post(owner.api(), "/v1/completions", {"model": TINY_BASE, **body})
    assert response.status_code == 200, response.content
    result: dict[str, Any] = response.json()
    return result


def sse_chunks(response: Any) -> tuple[list[dict[str, Any]], bool]:
    """(JSON chunks, whether it ended with [DONE] as the very last event)."""
    assert response["Content-Type"].startswith("text/event-stream")
    text = streamed(response).decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    payloads = [e.removeprefix("data: ") for e in events]
    return [json.loads(p) for p in payloads if p != "[DONE]"], payloads[-1] == "[DONE]"


def test_completion_has_the_reference_shape_and_usage(
    owner: Persona, inference_base: BaseModel
) -> None:
    body = complete(owner, prompt="Hello, how are", max_tokens=5, temperature=0)

    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == TINY_BASE
    (choice,) = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["finish_reason"] in ("stop", "length")
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_defaults_to_16(owner: Persona, inference_base: BaseModel) -> None:
    # A huge negative bias on EOS keeps the random model talking until the limit.
    body = complete(owner, prompt="x", temperature=0, logit_bias={"2": -100})

    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_echo_with_logprobs_scores_the_prompt_then_the_completion(
    owner: Persona, inference_base: BaseModel
) -> None:
    body = complete(owner, prompt="Hello there", max_tokens=3, temperature=0, echo=True, logprobs=2)

    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert choice["text"].startswith("Hello there")
    assert lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None
    assert "".join(lp["tokens"]) == choice["text"]
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(lp["tokens"]))]
    assert lp["text_offset"] == offsets
    assert all(len(top) <= 3 for top in lp["top_logprobs"][1:])


def test_prompt_arrays_and_n_number_the_choices(owner: Persona, inference_base: BaseModel) -> None:
    body = complete(owner, prompt=["a", "b"], n=2, max_tokens=2)

    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]


def test_token_array_prompts_match_text_prompts(
    owner: Persona, inference_base: BaseModel, tiny_dirs: TinyDirs
) -> None:
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(tiny_dirs.base))("Hello")["input_ids"]

    by_text = complete(owner, prompt="Hello", max_tokens=4, temperature=0)
    by_ids = complete(owner, prompt=[ids], max_tokens=4, temperature=0)

    assert by_ids["choices"][0]["text"] == by_text["choices"][0]["text"]


def test_stop_sequences_are_cut_and_finish_with_stop(
    owner: Persona, inference_base: BaseModel
) -> None:
    free = complete(
        owner, prompt="Hello, how are", max_tokens=8, temperature=0, logit_bias={"2": -100}
    )
    text = free["choices"][0]["text"]
    stop = text[3:5]

    body = complete(
        owner,
        prompt="Hello, how are",
        max_tokens=8,
        temperature=0,
        stop=[stop],
        logit_bias={"2": -100},
    )

    assert body["choices"][0]["text"] == text[: text.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_logit_bias_forces_a_token(owner: Persona, inference_base: BaseModel) -> None:
    body = complete(owner, prompt="x", max_tokens=4, logit_bias={"70": 100}, logprobs=0)

    lp = body["choices"][0]["logprobs"]
    assert len(set(lp["tokens"])) == 1


def test_best_of_returns_n_choices(owner: Persona, inference_base: BaseModel) -> None:
    body = complete(owner, prompt="x", max_tokens=3, n=1, best_of=3, seed=1)

    assert len(body["choices"]) == 1
    assert body["usage"]["completion_tokens"] <= 9


def test_suffix_is_refused_by_a_model_without_fill_in_the_middle_tokens(
    owner: Persona, inference_base: BaseModel
) -> None:
    response = post(
        owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x", "suffix": "<END>"}
    )

    assert assert_envelope(response, 400)["param"] == "suffix"
    # What the clients send when no suffix is wanted keeps working.
    assert complete(owner, prompt="x", max_tokens=1, suffix=None)["choices"]
    assert complete(owner, prompt="x", max_tokens=1, suffix="")["choices"]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_seed_beyond_64_bits_is_a_400_naming_seed(
    owner: Persona, inference_base: BaseModel, path: str
) -> None:
    body: dict[str, Any] = {"model": TINY_BASE, "seed": 1180591620717411303424, "max_tokens": 1}
    body |= {"messages": [{"role": "user", "content": "hi"}]} if "chat" in path else {"prompt": "x"}

    assert assert_envelope(post(owner.api(), path, body), 400)["param"] == "seed"


def test_stream_sends_chunks_then_done_and_usage_when_asked(
    owner: Persona, inference_base: BaseModel
) -> None:
    whole = complete(owner, prompt="Hello", max_tokens=6, temperature=0, logit_bias={"2": -100})

    response = post(
        owner.api(),
        "/v1/completions",
        {"model": TINY_BASE, "prompt": "Hello", "max_tokens": 6, "temperature": 0,
         "logit_bias": {"2": -100}, "stream": True, "stream_options": {"include_usage": True}},
    )  # fmt: skip

    chunks, done = sse_chunks(response)
    assert done
    texts = [c["choices"][0]["text"] for c in chunks if c["choices"]]
    assert "".join(texts) == whole["choices"][0]["text"]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]


def test_stream_parameter_errors_are_plain_400s(owner: Persona, inference_base: BaseModel) -> None:
    # Over the tiny model's 512-token context: detected before the stream starts.
    response = post(
        owner.api(),
        "/v1/completions",
        {"model": TINY_BASE, "prompt": "x", "max_tokens": 600, "stream": True},
    )

    assert assert_envelope(response, 400)["param"] == "max_tokens"


@pytest.mark.parametrize(
    ("body", "param"),
    [({"temperature": 3}, "temperature"), ({"logprobs": 6}, "logprobs"), ({"stop": list("abcde")}, "stop"),
     ({"n": 3, "best_of": 2}, "best_of"), ({"prompt": {"x": 1}}, "prompt"), ({"logit_bias": {"999999": 1}}, "logit_bias")],
)  # fmt: skip
def test_parameter_errors_are_400_naming_the_param(
    owner: Persona, inference_base: BaseModel, body: dict[str, Any], param: str
) -> None:
    response = post(owner.api(), "/v1/completions", {"model": TINY_BASE, "prompt": "x", **body})

    assert assert_envelope(response, 400)["param"] == param


def test_unknown_model_is_404_model_not_found(owner: Persona, inference_base: BaseModel) -> None:
    response = post(owner.api(), "/v1/completions", {"model": "nope", "prompt": "x"})

    assert assert_envelope(response, 404, "model_not_found")["param"] == "model"


def test_another_orgs_fine_tune_is_404(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    theirs = make_fine_tune(outsider.org, ft_name(outsider.org))

    response = post(owner.api(), "/v1/completions", {"model": theirs.name, "prompt": "x"})

    assert_envelope(response, 404, "model_not_found")


def test_aliases_resolve_to_the_base(owner: Persona, inference_base: BaseModel) -> None:
    body = post(
        owner.api(), "/v1/completions", {"model": TINY_ALIAS, "prompt": "x", "max_tokens": 1}
    ).json()

    assert body["model"] == TINY_BASE


def test_fine_tune_output_differs_from_the_base(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    params = {"prompt": "Hello, how are", "max_tokens": 6, "temperature": 0}

    base = complete(owner, **params)
    tuned = complete(owner, **{**params, "model": model.name})

    assert tuned["model"] == model.name
    assert tuned["choices"][0]["text"] != base["choices"][0]["text"]


def test_engines_route_takes_the_model_from_the_url(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    response = post(
        owner.api(), f"/v1/engines/{model.name}/completions", {"prompt": "x", "max_tokens": 1}
    )

    assert response.status_code == 200
    assert response.json()["model"] == model.name


def test_usage_is_recorded_per_org_model_and_key(owner: Persona, inference_base: BaseModel) -> None:
    first = complete(owner, prompt="Hello", max_tokens=3)
    second = complete(owner, prompt="Hello", max_tokens=2)

    row = UsageRecord.objects.get(organization=owner.org, model_name=TINY_BASE)
    assert row.api_key == ApiKey.objects.get(created_by=owner.user)
    assert row.user == owner.user
    assert row.requests == 2
    assert row.prompt_tokens == first["usage"]["prompt_tokens"] + second["usage"]["prompt_tokens"]
    assert row.completion_tokens == (
        first["usage"]["completion_tokens"] + second["usage"]["completion_tokens"]
    )


def test_streamed_usage_is_recorded_too(owner: Persona, inference_base: BaseModel) -> None:
    response = post(
        owner.api(),
        "/v1/completions",
        {"model": TINY_BASE, "prompt": "Hi", "max_tokens": 3, "stream": True},
    )
    sse_chunks(response)

    assert UsageRecord.objects.get(model_name=TINY_BASE).requests == 1


def test_rate_limit_is_429_with_retry_after(
    owner: Persona, inference_base: BaseModel, settings: Settings
) -> None:
    settings.TUNERY_RATE_LIMIT_PER_MINUTE = 2
    cache.clear()
    client = owner.api()
    body = {"model": TINY_BASE, "prompt": "x", "max_tokens": 1}

    statuses = [post(client, "/v1/completions", body).status_code for _ in range(2)]
    limited = post(client, "/v1/completions", body)

    assert statuses == [200, 200]
    error = assert_envelope(limited, 429, "rate_limit_exceeded")
    assert 1 <= int(limited["Retry-After"]) <= 60
    assert "Try again in" in error["message"]


# --- chat ---------------------------------------------------------------------------------


def chat(owner: Persona, **body: Any) -> Any:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    return post(
        owner.api(), "/v1/chat/completions", {"model": TINY_BASE, "messages": messages, **body}
    )


def test_chat_completion_has_the_reference_shape(owner: Persona, inference_base: BaseModel) -> None:
    body = chat(owner, max_tokens=4, temperature=0, logprobs=True, top_logprobs=2).json()

    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]
    assert all(len(e["top_logprobs"]) == 2 for e in entries)
    assert body["usage"]["completion_tokens"] <= 4


def test_chat_stream_sends_role_content_and_finish_chunks(
    owner: Persona, inference_base: BaseModel
) -> None:
    whole = chat(owner, max_tokens=5, temperature=0).json()["choices"][0]["message"]["content"]

    chunks, done = sse_chunks(chat(owner, max_tokens=5, temperature=0, stream=True))

    assert done
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert content == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"][0]["delta"] == {}


WEATHER = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}


def test_chat_with_tools_renders_them_into_the_prompt_as_training_does(
    owner: Persona, inference_base: BaseModel, tiny_dirs: TinyDirs
) -> None:
    from engine.generation import chat_prompt
    from engine.models import load_tokenizer

    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
        ]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]  # fmt: skip
    tokenizer = load_tokenizer(tiny_dirs.base)
    prompt = chat_prompt(tokenizer, messages, [WEATHER])

    body = {"model": TINY_BASE, "messages": messages, "tools": [WEATHER], "max_tokens": 2}
    answer = post(owner.api(), "/v1/chat/completions", body)
    streamed, done = sse_chunks(post(owner.api(), "/v1/chat/completions", {**body, "stream": True}))

    assert answer.status_code == 200, answer.content
    usage = answer.json()["usage"]
    assert usage["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert "<tools>" in prompt and "<tool_response>\nsunny\n</tool_response>" in prompt
    assert done and streamed[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert streamed[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_chat_refuses_a_malformed_tool_call_naming_it(
    owner: Persona, inference_base: BaseModel
) -> None:
    bad = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}

    response = post(
        owner.api(),
        "/v1/chat/completions",
        {"model": TINY_BASE, "messages": [{"role": "user", "content": "x"}, bad]},
    )

    assert assert_envelope(response, 400)["param"] == "messages[1].tool_calls[0].function"


def test_chat_needs_a_chat_template(
    owner: Persona, tiny_dirs: TinyDirs, db: None, inference: str
) -> None:
    BaseModel.objects.create(
        name="plain", source=str(tiny_dirs.plain_base), has_chat_template=False
    )

    response = post(
        owner.api(),
        "/v1/chat/completions",
        {"model": "plain", "messages": [{"role": "user", "content": "x"}]},
    )

    assert assert_envelope(response, 400)["param"] == "model"


def test_chat_with_a_fine_tune(owner: Persona, make_fine_tune: MakeFineTune) -> None:
    model = make_fine_tune(owner.org, f"ft:{TINY_BASE}:{owner.org.slug}:chat:abc12345")

    body = chat(owner, model=model.name, max_tokens=3).json()

    assert body["model"] == model.name
