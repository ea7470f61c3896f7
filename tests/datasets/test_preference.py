"""Preference (DPO) files: each bad line reported with its number and param, statistics, token
counts, and the Files API's answer for a preference upload."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest

from datasets.models import File
from datasets.tokens import TokenCounter
from datasets.validation import analyse_stream
from tests.conftest import Persona
from tests.datasets.conftest import jsonl, validate
from tests.datasets.test_processing import make_file


def analyse(data: bytes, counter: TokenCounter | None = None) -> Any:
    return analyse_stream(
        io.BytesIO(data).read, counter=counter, context_length=2048, max_errors=100
    )


def pair(i: int = 0, preferred: str = "Paris.", other: str = "Lyon.") -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Capital of France? ({i})"}]},
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": other}],
    }


def broken(change: Any) -> dict[str, Any]:
    row = copy.deepcopy(pair(99))
    change(row)
    return row


BAD_LINES = [
    (lambda r: r.pop("input"), "input", "missing the `input` key"),
    (lambda r: r.pop("non_preferred_output"), "non_preferred_output", "missing"),
    (lambda r: r.update(extra=1), "extra", "not a field"),
    (lambda r: r.update(input=[]), "input", "must be an object"),
    (lambda r: r["input"].pop("messages"), "input.messages", "no `messages`"),
    (lambda r: r["input"].update(messages=[]), "input.messages", "is empty"),
    (lambda r: r["input"].update(foo=1), "input.foo", "not a field"),
    (lambda r: r["input"].update(tools="x"), "input.tools", "must be an array"),
    (
        lambda r: r["input"].update(parallel_tool_calls="yes"),
        "input.parallel_tool_calls",
        "boolean",
    ),
    (
        lambda r: r["input"]["messages"][0].update(role="robot"),
        "input.messages[0].role",
        "unknown role",
    ),
    (lambda r: r.update(preferred_output=[]), "preferred_output", "is empty"),
    (lambda r: r.update(preferred_output="Paris."), "preferred_output", "must be an array"),
    (
        lambda r: r["preferred_output"][0].update(role="user"),
        "preferred_output[0].role",
        "must be an assistant message",
    ),
    (
        lambda r: r["non_preferred_output"][0].update(content=3),
        "non_preferred_output[0].content",
        "",
    ),
    (
        lambda r: r["non_preferred_output"][0].update(weight=0),
        "non_preferred_output",
        "nothing to learn",
    ),
]


@pytest.mark.parametrize(("change", "param", "words"), BAD_LINES)
def test_each_bad_line_is_reported_with_its_number_and_param(
    change: Any, param: str, words: str
) -> None:
    report = analyse(jsonl([pair(0), pair(1), broken(change), pair(3)]))

    assert report.format == "preference"
    assert report.error_count == 1, report.errors
    error = report.errors[0]
    assert error["line"] == 3 and error["param"] == param, error
    assert words in error["message"]
    assert report.stats["examples"] == 3


def test_a_chat_line_in_a_preference_file_and_the_other_way_round() -> None:
    chat = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    report = analyse(jsonl([pair(0), chat]))
    assert report.errors[0]["line"] == 2 and "preference data" in report.errors[0]["message"]

    report = analyse(jsonl([chat, pair(0)]))
    assert report.format == "chat" and report.errors[0]["line"] == 2


def test_statistics_tokens_duplicates_and_identical_outputs(token_counter: TokenCounter) -> None:
    rows = [pair(0), pair(1), pair(1), pair(2, "Paris.", "Paris."), pair(3)]
    report = analyse(jsonl(rows), counter=token_counter)

    assert report.ok, report.errors
    stats = report.stats
    assert stats["format"] == "preference" and stats["task_type"] == "preference"
    assert stats["examples"] == 5
    assert stats["duplicates"] == {"count": 1, "lines": [3]}
    assert stats["preference"]["identical_outputs"] == 1
    assert stats["preference"]["identical_lines"] == [4]
    assert stats["roles"] == {"user": 5}
    assert stats["labels"] is None

    # Tokens: the input once (as the template renders it), both outputs as completion.
    encode = token_counter.tokenizer.encode
    one = analyse(jsonl([pair(0)]), counter=token_counter).stats["tokens"]
    turn = len(encode("Paris.", add_special_tokens=False).ids)
    other = len(encode("Lyon.", add_special_tokens=False).ids)
    overhead = token_counter.message_overhead.get("assistant", 0)
    assert one["completion"] == turn + other + overhead


def test_a_preference_upload_is_processed_with_its_format(owner: Persona) -> None:
    file = validate(make_file(owner, jsonl([pair(i) for i in range(4)])))
    assert file.status == File.Status.PROCESSED, file.status_details
    assert file.format == File.Format.PREFERENCE

    bad = validate(make_file(owner, jsonl([pair(0), {"input": {}}])))
    assert bad.status == File.Status.ERROR
    assert bad.errors[0]["line"] == 2


def test_the_files_api_reports_the_line(owner: Persona) -> None:
    client = owner.api()
    data = jsonl([pair(0), broken(lambda r: r["preferred_output"][0].update(role="user"))])
    upload = io.BytesIO(data)
    upload.name = "prefs.jsonl"
    created = client.post("/v1/files", {"purpose": "fine-tune", "file": upload}).json()
    file = validate(File.objects.get(public_id=created["id"]))
    body = client.get(f"/v1/files/{file.public_id}").json()
    assert body["status"] == "error"
    assert "line 2" in body["status_details"] and "assistant message" in body["status_details"]
    assert json.loads(json.dumps(body))  # plain JSON


def test_prepare_data_analysis_of_preference_pairs() -> None:
    from datasets import prepare

    rows = [pair(i) for i in range(12)]
    rows += [pair(1), pair(20, "Paris.", "Paris."), {"input": {}}]
    analysis = prepare.analyze(rows)

    assert analysis.format == "preference" and analysis.fatal is None
    ids = {f.id: f for f in analysis.findings}
    assert "15 preference pairs" in ids["num_examples"].message
    assert ids["preference_invalid_examples"].rows == (14,)
    assert ids["identical_outputs"].rows == (13,)
    assert ids["duplicates"].rows == (12,)
    assert "Mean length in characters" in ids["preference_lengths"].message
    kept, outputs = prepare.apply(
        analysis, [prepare.REMOVE_IDENTICAL_PAIRS, prepare.REMOVE_DUPLICATES]
    )
    assert len(kept) == 12 and outputs.changed and outputs.task_type == "preference"


def test_table_rows_map_to_pairs_with_prompt_chosen_rejected() -> None:
    from datasets import prepare
    from engine import chat_format

    table = [{"q": "Capital of France?", "good": "Paris.", "bad": "Lyon."}]
    pairs = prepare.rows_to_preference(
        table, system=None, system_text="Be brief.", prompt="q", chosen="good", rejected="bad"
    )
    assert pairs == [
        {
            "input": {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Capital of France?"},
                ]
            },
            "preferred_output": [{"role": "assistant", "content": "Paris."}],
            "non_preferred_output": [{"role": "assistant", "content": "Lyon."}],
        }
    ]
    assert not chat_format.validate_preference(pairs[0])
