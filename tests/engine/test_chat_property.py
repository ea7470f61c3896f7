"""What validates must train (issue 11): a property test over generated chat files.

Hypothesis writes JSONL files of chat examples drawn from OpenAI's format (system prompts, text
parts, names, tool definitions or deprecated functions, parallel tool calls and their results,
weights), some of them broken in one place (a field removed, a wrong type, arguments that are not
JSON, an unknown key, a duplicate key). Then, on the tiny model with a template without tool
support (the fallback rendering) and one with it:

* a file the upload validator accepts tokenizes and takes one training step (the trainer's own
  pack loss), with loss on some token;
* a file it refuses has every error on a line of the file, and the trainer refuses that line too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets.tokens import build_counter
from datasets.validation import analyse_stream
from engine import chat_format
from engine.data import Tokenizing, load_examples, make_packs
from engine.spec import TrainingError, TrainSpec
from engine.tiny import build_tiny_model
from engine.trainer import BatchStats, _batch_weight, _pack_loss, build_runtime
from tests.engine.chat_templates import NATIVE_TOOLS_TEMPLATE

NAMES = ["weather", "search_docs", "add"]
MAX_LENGTH = 256

# Text with what breaks naive handling: quotes (JSON and the duplicate-key count), newlines,
# braces, non-ASCII, and the template's own markers.
PIECES = [*"ab xyz\"'{}:\n\t,é中🙂", "<|im_end|>", "<tool_call>", "\\u0022"]
text = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)


def tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": f"the {name} tool",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }


def content(draw: st.DrawFn) -> Any:
    if draw(st.booleans()):
        return draw(text)
    return [{"type": "text", "text": draw(text)} for _ in range(draw(st.integers(1, 2)))]


@st.composite
def examples(draw: st.DrawFn) -> dict[str, Any]:
    """A valid example: OpenAI's format, every optional part drawn."""
    defined = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3))
    deprecated = bool(defined) and draw(st.booleans())
    parallel = draw(st.booleans())
    row: dict[str, Any] = {"messages": []}
    if defined:
        if deprecated:
            row["functions"] = [tool(n)["function"] for n in defined]
        else:
            row["tools"] = [tool(n) for n in defined]
        if not deprecated and draw(st.booleans()):
            row["parallel_tool_calls"] = parallel
    messages = row["messages"]
    if draw(st.booleans()):
        messages.append({"role": "system", "content": content(draw)})
    calls = 0
    for _ in range(draw(st.integers(1, 3))):
        user: dict[str, Any] = {"role": "user", "content": content(draw)}
        if draw(st.booleans()):
            user["name"] = draw(st.sampled_from(["ann", "bob"]))
        messages.append(user)
        if len(defined) > 0 and draw(st.booleans()):
            limit = 1 if row.get("parallel_tool_calls") is False or deprecated else 2
            chosen = draw(st.lists(st.sampled_from(defined), min_size=1, max_size=limit))
            arguments = [json.dumps({"q": draw(text)}) for _ in chosen]
            reply: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | text)}
            if deprecated:
                reply["function_call"] = {"name": chosen[0], "arguments": arguments[0]}
                messages.append(reply)
                messages.append({"role": "function", "name": chosen[0], "content": draw(text)})
            else:
                ids = [f"call_{calls + k}" for k in range(len(chosen))]
                calls += len(chosen)
                reply["tool_calls"] = [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in zip(ids, chosen, arguments, strict=True)
                ]
                messages.append(reply)
                for call_id in ids:
                    messages.append(
                        {"role": "tool", "tool_call_id": call_id, "content": content(draw)}
                    )
        answer: dict[str, Any] = {"role": "assistant", "content": content(draw)}
        weight = draw(st.sampled_from([None, 0, 1]))
        if weight is not None:
            answer["weight"] = weight
        messages.append(answer)
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        messages[-1]["weight"] = 1
    return row


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


@st.composite
def lines(draw: st.DrawFn) -> tuple[str, bool]:
    """(a JSONL line, whether it was broken on purpose) - an example, maybe broken in one place."""
    row = draw(examples())
    how = draw(
        st.sampled_from(["keep", "keep", "remove", "retype", "extra", "arguments", "duplicate"])
    )
    if how == "keep":
        return json.dumps(row, ensure_ascii=draw(st.booleans())), False
    if how == "duplicate":
        # The same key twice in the first message: parsers keep the last silently.
        first = json.dumps(row["messages"][0])
        twice = first[:-1] + ', "role": ' + json.dumps(row["messages"][0]["role"]) + "}"
        return json.dumps(row).replace(first, twice, 1), True
    paths = _paths(row)
    path = draw(st.sampled_from(paths))
    parent: Any = row
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "remove":
        if isinstance(parent, list):
            parent.pop(last)
        else:
            del parent[last]
    elif how == "retype":
        parent[last] = draw(st.sampled_from([5, None, True, [], {}, "x"]))
    elif how == "extra" and isinstance(parent[last], dict):
        parent[last]["surprise"] = 1
    elif how == "arguments":
        calls = [c for m in row["messages"] for c in m.get("tool_calls", [])]
        if calls:
            calls[0]["function"]["arguments"] = draw(st.sampled_from(["{", "[1]", "not json", "7"]))
    return json.dumps(row), True


@pytest.fixture(scope="module", params=["fallback", "native"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    template: bool | str = True if request.param == "fallback" else NATIVE_TOOLS_TEMPLATE
    model_dir = build_tiny_model(tmp_path_factory.mktemp(request.param), chat_template=template)
    out = tmp_path_factory.mktemp("out")
    spec = TrainSpec(model_source=str(model_dir), train_path="", output_dir=str(out), method="full")
    runtime = build_runtime(spec, model_dir, "cpu", None)
    optimizer = torch.optim.SGD(runtime.model.parameters(), lr=1e-3)
    counter = build_counter(model_dir, name="tiny", threads=1)
    return runtime, optimizer, counter, tmp_path_factory.mktemp("files")


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(lines(), min_size=1, max_size=3))
def test_what_validates_trains_and_what_does_not_names_its_line(
    setup: Any, drawn: list[tuple[str, bool]]
) -> None:
    runtime, optimizer, counter, folder = setup
    path = Path(folder) / "train.jsonl"
    data = "".join(line + "\n" for line, _ in drawn)
    path.write_text(data, encoding="utf-8")

    report = analyse_stream(
        io.BytesIO(data.encode()).read, counter=counter, context_length=MAX_LENGTH, max_errors=10
    )

    tokenizing = Tokenizing(runtime.tokenizer, 0.01)
    if not any(broken for _, broken in drawn):
        assert report.ok, report.errors  # OpenAI's format, as generated, is accepted
    if report.ok:
        examples, _ = load_examples(path, tokenizing, MAX_LENGTH, "truncate")
        assert len(examples) == len(drawn)
        stats = BatchStats()
        total = _batch_weight(examples) or 1.0
        # Packs rounded up to a few shapes, as the trainer does on CPU: each new shape costs
        # the CPU kernels a set-up that would dominate this test.
        filler = int(runtime.tokenizer.pad_token_id)
        for pack in make_packs(examples, 4 * MAX_LENGTH, bucket=128, filler_id=filler):
            loss = _pack_loss(runtime, pack, total, stats)
            if loss is not None:
                assert torch.isfinite(loss)
                torch.autograd.backward(loss)  # loss.backward(), unannotated in torch
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert stats.tokens == sum(len(e) for e in examples)
        assert report.stats["tokens"]["total"] > 0
    else:
        assert report.errors
        for error in report.errors:
            assert 1 <= error["line"] <= len(drawn), error
            assert error["message"]
            line, _ = drawn[error["line"] - 1]
            if "duplicate" not in error["message"] and "twice" not in error["message"]:
                # The trainer refuses it too, with the line.
                with pytest.raises(TrainingError, match=f"^Line {error['line']}"):
                    tokenizing.example(json.loads(line), f"Line {error['line']}")


@settings(max_examples=200, deadline=None)
@given(lines())
def test_the_fast_path_for_plain_chat_agrees_with_the_schema(drawn: tuple[str, bool]) -> None:
    # Plain text conversations skip the general walk; they must come out the same.
    row = json.loads(drawn[0])

    plain = chat_format._plain_conversation(row)

    if plain is not None:
        assert chat_format.validate_example(row) == []
        messages, trained = chat_format._normalise_messages(row["messages"])
        assert plain == chat_format.Conversation(messages, trained)
