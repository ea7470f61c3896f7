"""The chat schema (engine.chat_format): what validates, how it is normalised and rendered, and
that training and serving tokenize a conversation the same way on real templates."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from engine import chat_format
from engine.data import Tokenizing
from engine.generation import GenerateRequest, RequestState, chat_prompt
from engine.tiny import CHATML_TEMPLATE, SMOLLM2_TEMPLATE, _build_tokenizer, build_tiny_model
from tests.engine.chat_templates import BOS_TEMPLATE, NATIVE_TOOLS_TEMPLATE

WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def call(call_id: str, city: str) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "weather", "arguments": arguments},
    }


def tool_example() -> dict[str, Any]:
    """Everything OpenAI's format allows in one example."""
    return {
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "Weather in Paris and Rome?", "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [call("a", "Paris"), call("b", "Rome")]},
            {"role": "tool", "tool_call_id": "a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "rain"}]},
            {"role": "assistant", "content": "Paris: sunny. Rome: rain.", "weight": 0},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You're welcome.", "weight": 1},
        ],
        "tools": [WEATHER],
        "parallel_tool_calls": True,
    }  # fmt: skip


# --- the schema ----------------------------------------------------------------------------------


def test_a_full_example_validates_and_normalises() -> None:
    conversation = chat_format.normalise_example(tool_example())

    messages = conversation.messages
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["name"] == "ann"
    assert messages[2]["content"] == ""
    assert messages[2]["tool_calls"][1] == {
        "id": "b",
        "type": "function",
        "function": {"name": "weather", "arguments": {"city": "Rome"}},
    }
    # Tool results learn the name of the function they answer (templates print it).
    assert messages[4] == {
        "role": "tool",
        "content": "rain",
        "tool_call_id": "b",
        "name": "weather",
    }
    assert conversation.trained == [None, None, True, None, None, False, None, True]
    assert conversation.tools == [WEATHER]


def test_deprecated_functions_become_tools() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "function_call": {"name": "weather", "arguments": "{}"}},
            {"role": "function", "name": "weather", "content": "sunny"},
            {"role": "assistant", "content": "Sunny."},
        ],
        "functions": [WEATHER["function"]],
    }  # fmt: skip

    conversation = chat_format.normalise_example(row)

    assert conversation.tools == [WEATHER]
    assert conversation.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "weather", "arguments": {}}}
    ]
    assert conversation.messages[2] == {"role": "tool", "content": "sunny", "name": "weather"}


def _break(path: str, value: Any) -> dict[str, Any]:
    """tool_example() with the field at `path` (dots and indexes) set to `value`, or removed."""
    row = copy.deepcopy(tool_example())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = row
    for part in parents:
        target = target[part]
    if value is _REMOVE:
        del target[last]
    else:
        target[last] = value
    return row


_REMOVE = object()


@pytest.mark.parametrize(
    ("path", "value", "param", "message"),
    [
        ("messages.2.tool_calls.0.function.arguments", "{city: Paris}", "messages[2].tool_calls[0].function.arguments", "is not valid JSON"),
        ("messages.2.tool_calls.0.function.arguments", '["Paris"]', "messages[2].tool_calls[0].function.arguments", "must encode a JSON object, got array"),
        ("messages.2.tool_calls.0.function.arguments", {"city": "Paris"}, "messages[2].tool_calls[0].function.arguments", "must be a string of JSON"),
        ("messages.2.tool_calls", "weather(Paris)", "messages[2].tool_calls", "must be an array, got string"),
        ("messages.2.tool_calls", [], "messages[2].tool_calls", "is empty"),
        ("messages.2.tool_calls.0.function", _REMOVE, "messages[2].tool_calls[0].function", "has no `function`"),
        ("messages.2.tool_calls.0.type", "tool", "messages[2].tool_calls[0].type", 'must be "function"'),
        ("messages.2.tool_calls.0.id", _REMOVE, "messages[2].tool_calls[0].id", "has no `id`"),
        ("messages.2.tool_calls.1.id", "a", "messages[2].tool_calls[1].id", "is used twice"),
        ("messages.2.tool_calls.0.function.name", "forecast", "messages[2].tool_calls[0].function.name", "don't define"),
        ("messages.2.tool_calls.0.function.name", "get weather", "messages[2].tool_calls[0].function.name", "1 to 64 letters"),
        ("messages.2.content", _REMOVE, "messages[2].content", "has no `content`"),
        ("messages.5.content", None, "messages[5].content", "is null"),
        ("messages.3.tool_call_id", "zzz", "messages[3].tool_call_id", "answers no earlier tool call"),
        ("messages.3.tool_call_id", _REMOVE, "messages[3].tool_call_id", "has no `tool_call_id`"),
        ("messages.0.content", [{"type": "image_url", "image_url": {"url": "x"}}], "messages[0].content[0].type", "read text only"),
        ("messages.0.content", [{"type": "text", "text": 3}], "messages[0].content[0].text", "must be a string"),
        ("messages.0.content", [{"type": "text", "text": "a", "cache": 1}], "messages[0].content[0].cache", "is not a field"),
        ("messages.0.content", [], "messages[0].content", "is an empty array"),
        ("messages.1.mood", "happy", "messages[1].mood", "is not a field of `messages[1]`"),
        ("messages.1.weight", 1, "messages[1].weight", "only assistant messages"),
        ("messages.7.weight", 0.5, "messages[7].weight", "must be 0 or 1"),
        ("messages.7.weight", True, "messages[7].weight", "must be 0 or 1"),
        ("messages.1.role", "developer", "messages[1].role", 'unknown role "developer"'),
        ("messages.1.name", 5, "messages[1].name", "must be a string"),
        ("tools", {"weather": WEATHER}, "tools", "`tools` must be an array, got object"),
        ("tools.0.type", "retrieval", "tools[0].type", 'must be "function"'),
        ("tools.0.function", _REMOVE, "tools[0].function", "has no `function`"),
        ("tools.0.function.parameters", "city", "tools[0].function.parameters", "must be an object"),
        ("tools.0.function.name", _REMOVE, "tools[0].function.name", "is missing"),
        ("parallel_tool_calls", False, "messages[2].tool_calls", "`parallel_tool_calls` is false"),
        ("parallel_tool_calls", "yes", "parallel_tool_calls", "must be a boolean"),
        ("functions", [WEATHER["function"]], "functions", "both `tools` and the deprecated `functions`"),
        ("seed", 1, "seed", "`seed` is not a field of the example"),
        ("messages", [], "messages", "is empty"),
    ],
)  # fmt: skip
def test_every_break_names_its_field(path: str, value: Any, param: str, message: str) -> None:
    errors = chat_format.validate_example(_break(path, value), line=7)

    assert errors, "accepted"
    assert errors[0].param == param
    assert message in errors[0].message
    assert errors[0].line == 7
    assert str(errors[0]).startswith("line 7: ")


def test_a_file_needs_something_to_learn() -> None:
    untrained = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "y", "weight": 0},
        ]
    }
    no_reply = {"messages": [{"role": "user", "content": "x"}]}

    assert "nothing to learn" in chat_format.validate_example(untrained)[0].message
    assert "no assistant message" in chat_format.validate_example(no_reply)[0].message
    with pytest.raises(chat_format.ChatFormatError, match="no assistant message"):
        chat_format.normalise_example(no_reply)


def test_validate_messages_checks_a_bare_list_under_any_path() -> None:
    # For formats that embed messages (a preference pair's input, say).
    messages = [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "1", "content": "y"},
    ]

    errors = chat_format.validate_messages(
        messages, line=3, path="input.messages", require_assistant=False
    )

    assert [(e.line, e.param) for e in errors] == [(3, "input.messages[1].tool_call_id")]


# --- rendering -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, Any]:
    return {
        "chatml": _build_tokenizer(512, CHATML_TEMPLATE),
        "smollm2": _build_tokenizer(512, SMOLLM2_TEMPLATE),
        "native": _build_tokenizer(512, NATIVE_TOOLS_TEMPLATE),
    }


@pytest.mark.parametrize("name", ["chatml", "smollm2", "native"])
def test_the_validator_renders_as_the_trainer_does(tokenizers: dict[str, Any], name: str) -> None:
    tokenizer = tokenizers[name]
    conversation = chat_format.normalise_example(tool_example())

    trainer = chat_format.render_chat(chat_format.TokenizerRenderer(tokenizer), conversation)
    validator = chat_format.render_chat(
        chat_format.JinjaRenderer(tokenizer.chat_template, tokenizer.special_tokens_map),
        conversation,
    )

    assert validator == trainer


def test_a_template_without_tool_support_gets_the_fallback_rendering(
    tokenizers: dict[str, Any],
) -> None:
    renderer = chat_format.TokenizerRenderer(tokenizers["chatml"])

    text = chat_format.render_chat(renderer, chat_format.normalise_example(tool_example())).text

    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert '\n<tools>\n{"type": "function", "function": {"name": "weather", ' in text
    assert (
        "<|im_start|>assistant\n"
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\nrain\n</tool_response><|im_end|>\n"
    ) in text


def test_a_template_with_tool_support_gets_tools_and_calls_as_they_are(
    tokenizers: dict[str, Any],
) -> None:
    renderer = chat_format.TokenizerRenderer(tokenizers["native"])

    text = chat_format.render_chat(renderer, chat_format.normalise_example(tool_example())).text

    assert "You may call one or more functions" not in text  # not the fallback
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n<tools>\n")
    assert '{"name": "weather", "arguments": {"city": "Rome"}}' in text


def test_serving_reads_a_call_back_from_the_text_training_taught() -> None:
    conversation = chat_format.normalise_example(tool_example())
    calls = conversation.messages[2]["tool_calls"]
    text = "Checking.\n" + "\n".join(chat_format.tool_call_text(c) for c in calls)

    parsed = chat_format.parse_tool_calls(text)

    assert parsed == (
        "Checking.",
        [
            {"name": "weather", "arguments": '{"city": "Paris"}'},
            {"name": "weather", "arguments": '{"city": "Rome"}'},
        ],
    )
    assert chat_format.parse_tool_calls("<tool_call>\nnot json\n</tool_call>") is None
    assert chat_format.parse_tool_calls("no call here") is None


# --- training and serving agree ------------------------------------------------------------------


def _trained_text(tokenizer: Any, example: Any) -> str:
    return str(
        tokenizer.decode(
            [t for t, w in zip(example.input_ids, example.weights, strict=True) if w > 0]
        )
    )


@pytest.mark.parametrize("name", ["chatml", "smollm2", "native"])
def test_training_prompts_are_the_tokens_serving_sends(
    tokenizers: dict[str, Any], name: str
) -> None:
    tokenizer = tokenizers[name]
    row = tool_example()
    messages = row["messages"]

    example = Tokenizing(tokenizer, 0.01).example(row, "line 1")

    # For each assistant turn, the tokens before it are what /v1/chat/completions would send for
    # the conversation so far (the last turn's also give Example.prompt_len).
    ids = example.input_ids
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for turn in turns:
        prompt = chat_prompt(tokenizer, messages[:turn], row["tools"])
        served = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert ids[: len(served)] == served
        assert example.weights[len(served)] == (0.0 if messages[turn].get("weight") == 0 else 1.0)
    assert example.prompt_len == len(
        tokenizer(
            chat_prompt(tokenizer, messages[: turns[-1]], row["tools"]), add_special_tokens=False
        )["input_ids"]
    )
    assert (
        tokenizer.decode(ids)
        == chat_format.render_chat(
            chat_format.TokenizerRenderer(tokenizer), chat_format.normalise_example(row)
        ).text
    )
    # Loss on the calls and the weight-1 reply, not on the weight-0 one.
    trained = _trained_text(tokenizer, example)
    assert '"arguments": {"city": "Rome"}}\n</tool_call><|im_end|>' in trained
    assert trained.endswith("You're welcome.<|im_end|>\n")
    assert "Paris: sunny" not in trained


def test_a_conversation_opening_with_the_assistant_trains_its_first_turn(
    tokenizers: dict[str, Any],
) -> None:
    # SmolLM2's default system prompt appears only once there is a message: the first turn's
    # prompt is not a prefix of the conversation, and the turn is found after its header.
    tokenizer = tokenizers["smollm2"]
    row = {"messages": [{"role": "assistant", "content": "Hi! Ask me anything."}]}

    example = Tokenizing(tokenizer, 0.01).example(row, "line 1")

    assert _trained_text(tokenizer, example) == "Hi! Ask me anything.<|im_end|>\n"
    assert tokenizer.decode(example.input_ids).startswith("<|im_start|>system\nYou are a helpful")


def test_a_tokenizer_that_adds_a_bos_trains_and_serves_one_bos(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "bos", chat_template=BOS_TEMPLATE, add_bos=True)
    from engine.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(model_dir), device="cpu")
    bos = tokenizer.bos_token_id
    assert tokenizer("a")["input_ids"][0] == bos  # the tokenizer does add one
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]

    example = Tokenizing(tokenizer, 0.01).example({"messages": messages}, "line 1")
    request = GenerateRequest(prompt=chat_prompt(tokenizer, messages[:1]), add_special_tokens=False)
    served = RequestState.for_model(model, tokenizer, request).prompt_ids

    assert example.input_ids.count(bos) == 1
    assert example.input_ids[: example.prompt_len] == served
    assert served[0] == bos and served.count(bos) == 1


def test_a_tool_call_dataset_trains_and_the_model_calls_the_tool_when_served(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The issue's reproduction: tool-call data used to validate, then fail the job with "every
    # message needs a string 'content'". Overfit one conversation, then serve its prompt.
    from engine import train
    from engine.models import load_model_and_tokenizer
    from engine.spec import TrainSpec

    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call("c1", "Paris")]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": messages, "tools": [WEATHER]}) + "\n")
    spec = TrainSpec(
        model_source=str(tiny_model_dir),
        train_path=str(path),
        output_dir=str(tmp_path / "out"),
        method="full",
        n_epochs=80,
        batch_size=1,
        learning_rate_multiplier=1.0,
        base_learning_rate=5e-3,
        num_threads=1,
    )

    result = train(spec)

    model, tokenizer = load_model_and_tokenizer(result.model_dir, device="cpu")
    model.eval()
    from engine.generation import generate

    prompt = chat_prompt(tokenizer, messages[:1], [WEATHER])
    request = GenerateRequest(prompt=prompt, max_tokens=80, temperature=0, add_special_tokens=False)
    text = generate(model, tokenizer, request).choices[0].text
    assert result.status == "succeeded"
    assert chat_format.parse_tool_calls(text) == (
        "",
        [{"name": "weather", "arguments": '{"city": "Paris"}'}],
    )
