"""The prepare-data analysis beyond the recorded parity cases: chat, apply(), serialisation."""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Mapping

import pandas as pd
import pytest

from datasets import prepare, readers


def _pc(n: int, **overrides: str) -> list[dict[str, str]]:
    rows = [{"prompt": f"question {i} ->", "completion": f" {i} is the answer\n"} for i in range(n)]
    for key, value in overrides.items():
        index, column = key.split("_")
        rows[int(index.removeprefix("r"))][column] = value
    return rows


def _ids(analysis: prepare.Analysis) -> list[str]:
    return [f.id for f in analysis.findings]


def test_clean_data_has_no_remediations() -> None:
    analysis = prepare.analyze(_pc(120))

    assert analysis.remediations == []
    assert analysis.task_type == prepare.CONDITIONAL
    assert analysis.prompt_suffix == " ->"
    assert analysis.completion_suffix == " is the answer\n"


def test_a_dataframe_is_analysed_like_rows() -> None:
    rows = _pc(5, r1_completion="")

    from_rows = prepare.analyze(rows)
    from_frame = prepare.analyze(pd.DataFrame(rows))

    assert [f.message for f in from_frame.findings] == [f.message for f in from_rows.findings]


def test_apply_only_the_accepted_recommendations() -> None:
    rows = [{"prompt": f"Q{i}", "completion": f"a{i}"} for i in range(6)]
    analysis = prepare.analyze(rows)

    fixed, outputs = prepare.apply(analysis, [prepare.ADD_COMPLETION_SPACE, "no-such-fix"])

    assert fixed[0] == {"prompt": "Q0", "completion": " a0"}
    assert outputs.changed
    assert not outputs.split


def test_apply_nothing_on_clean_data_changes_nothing() -> None:
    fixed, outputs = prepare.apply(_pc(3), [])

    assert fixed == _pc(3)
    assert not outputs.changed


def test_apply_refuses_an_analysis_that_stopped_on_an_error() -> None:
    with pytest.raises(ValueError, match="`completion` column/key is missing"):
        prepare.apply([{"prompt": "a"}], [])


def test_long_examples_are_recomputed_after_an_earlier_fix() -> None:
    # The original dropped by label what it had computed as positions (and crashed here).
    long = "x" * 10_001
    rows = _pc(6, r4_prompt=long + " ->")
    rows.insert(1, dict(rows[0]))  # a duplicate before the long row shifts it by one
    analysis = prepare.analyze(rows)

    fixed, outputs = prepare.apply(
        analysis, [prepare.REMOVE_DUPLICATES, prepare.REMOVE_LONG_EXAMPLES]
    )

    assert [r["prompt"] for r in fixed] == [f"question {i} ->" for i in (0, 1, 2, 3, 5)]
    assert outputs.notes == [
        "The indices of the long examples has changed as a result of a previously applied "
        "recommendation.\nThe 1 long examples to be dropped are now at the following indices: "
        "[4]\n"
    ]


def test_removing_a_completion_prefix_never_leaves_an_empty_completion() -> None:
    rows = [
        {"prompt": f"p{i}", "completion": c}
        for i, c in enumerate([" Answer:", " Answer: yes", " Answer: no"])
    ]
    analysis = prepare.analyze(rows)

    fixed, _ = prepare.apply(
        analysis, [prepare.REMOVE_COMPLETION_PREFIX, prepare.ADD_COMPLETION_SPACE]
    )

    assert [r["completion"] for r in fixed] == [" ", "  yes", "  no"]


def test_classification_split_caps_validation_at_1000_and_suggests_options() -> None:
    rows = [{"prompt": f"n{i} ->", "completion": " odd" if i % 2 else " even"} for i in range(5005)]
    analysis = prepare.analyze(rows)
    assert analysis.offers_split

    _, outputs = prepare.apply(analysis, [prepare.SPLIT])

    assert outputs.train is not None
    assert outputs.valid is not None
    assert (len(outputs.train), len(outputs.valid)) == (4005, 1000)
    assert outputs.create_options.startswith(" --compute_classification_metrics")
    assert "--classification_positive_class" in outputs.create_options


def test_multiclass_split_suggests_n_classes() -> None:
    rows = [{"prompt": f"t{i} ->", "completion": f" c{i % 3}"} for i in range(30)]

    _, outputs = prepare.apply(prepare.analyze(rows), [prepare.SPLIT])

    assert (
        outputs.create_options == " --compute_classification_metrics --classification_n_classes 3"
    )
    assert outputs.valid is not None
    assert len(outputs.valid) == 6


def test_the_split_is_stratified_by_label() -> None:
    # 95% ham, 5% spam: a plain random 20% sample can miss most of the spam; this can't.
    rows = [
        {"prompt": f"m{i} ->", "completion": " spam" if i % 20 == 0 else " ham"} for i in range(200)
    ]

    train, valid = prepare.split_rows(rows)

    assert (len(train), len(valid)) == (160, 40)
    assert Counter(r["completion"] for r in valid) == {" ham": 38, " spam": 2}
    assert Counter(r["completion"] for r in train) == {" ham": 152, " spam": 8}
    assert sorted(map(str, train + valid)) == sorted(map(str, rows))


def test_the_split_is_the_same_on_every_run_and_differs_by_seed() -> None:
    rows = [{"prompt": f"m{i} ->", "completion": f" c{i % 3}"} for i in range(90)]

    first = prepare.split_rows(rows)

    assert prepare.split_rows(rows) == first
    assert prepare.split_rows(rows, seed=7) != first
    _, valid = first
    assert valid == [r for r in rows if r in valid]  # in the file's order


def test_every_label_with_two_examples_is_validated_and_trained_on() -> None:
    # 1000 rows, 20% = 200 for validation; 50 rare labels with 2 to 3 examples each would get
    # no validation row by proportion alone: the common label gives up 26 of its 176.
    rows = [{"prompt": f"a{i} ->", "completion": " common"} for i in range(880)]
    rows += [{"prompt": f"r{i} ->", "completion": f" rare{i % 50}"} for i in range(120)]

    train, valid = prepare.split_rows(rows)

    assert (len(train), len(valid)) == (800, 200)
    validated = Counter(r["completion"] for r in valid)
    trained = Counter(r["completion"] for r in train)
    assert all(validated[f" rare{k}"] == 1 and trained[f" rare{k}"] >= 1 for k in range(50))
    assert validated[" common"] == 150


@pytest.mark.parametrize(
    ("counts", "total", "expected"),
    [
        ([50, 30, 15, 3, 2], 20, [9, 6, 3, 1, 1]),  # the biggest spares a row for the last
        ([2, 2, 2, 2, 2, 2], 3, [1, 1, 1, 0, 0, 0]),  # fewer rows than labels: first come
        ([4003, 1002], 1000, [800, 200]),
        ([10, 10, 10], 6, [2, 2, 2]),
        ([7, 1], 2, [2, 0]),  # a single example stays in training
        ([1, 1, 1], 2, [1, 1, 0]),  # ...unless nothing else can fill the budget
        ([5], 0, [0]),
        ([], 3, []),
    ],
)
def test_allocate_gives_proportional_shares(
    counts: list[int], total: int, expected: list[int]
) -> None:
    assert prepare.allocate(counts, total) == expected


@pytest.mark.parametrize(("n", "sizes"), [(10, (8, 2)), (11, (8, 3)), (5005, (4005, 1000))])
def test_split_sizes_are_the_legacy_tools(n: int, sizes: tuple[int, int]) -> None:
    assert prepare.split_sizes(n) == sizes


def test_findings_serialise_with_line_numbers_through_necessary_fixes() -> None:
    lines = [
        {"prompt": "a ->", "completion": ""},
        "broken",
        {"prompt": "b ->", "completion": " x\n"},
        {"prompt": "b ->", "completion": " x\n"},
    ]
    data = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()
    analysis = prepare.analyze(readers.read_jsonl_lenient(io.BytesIO(data)))

    stored = json.loads(json.dumps(analysis.to_json()))

    by_id = {f["id"]: f for f in stored["findings"]}
    assert by_id["unreadable_lines"]["remediation"]["kind"] == "necessary"
    assert by_id["empty_completion"]["lines"] == [1]
    # Row 1 after the empty completion was removed is the duplicate on line 4.
    assert by_id["duplicates"]["rows"] == [1]
    assert by_id["duplicates"]["lines"] == [4]
    assert by_id["duplicates"]["remediation"] == {
        "id": "remove_duplicates",
        "kind": "recommended",
        "message": "Remove 1 duplicate rows",
        "params": {},
    }


def test_long_row_lists_are_abbreviated_when_stored() -> None:
    rows = [{"prompt": "same ->", "completion": " same"}] + [
        {"prompt": f"p{i} ->", "completion": f" c{i}"} for i in range(10)
    ]
    rows += [{"prompt": "same ->", "completion": " same"}] * 50

    stored = prepare.analyze(rows).to_json()

    duplicates = next(f for f in stored["findings"] if f["id"] == "duplicates")
    assert duplicates["row_count"] == 50
    assert duplicates["message"].endswith("… (30 more)]")


# --- chat -----------------------------------------------------------------------------------


def _chat(*messages: Mapping[str, object]) -> dict[str, object]:
    return {"messages": list(messages)}


SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "Hi"}
ASSISTANT = {"role": "assistant", "content": "Hello"}


@pytest.mark.parametrize(
    ("example", "category"),
    [
        ("not an object", "data_type"),
        ({"messages": []}, "missing_messages_list"),
        (_chat(USER, {"role": "assistant"}), "message_missing_key"),
        (_chat(USER, {**ASSISTANT, "mood": "happy"}), "message_unrecognized_key"),
        (_chat({"role": "robot", "content": "x"}, ASSISTANT), "unrecognized_role"),
        (_chat(USER, {"role": "assistant", "content": 5}), "missing_content"),
        (_chat(SYSTEM, USER), "example_missing_assistant_message"),
    ],
)
def test_chat_format_errors_use_the_cookbook_categories(example: object, category: str) -> None:
    rows = [_chat(SYSTEM, USER, ASSISTANT), example]

    analysis = prepare.analyze(rows)

    assert category in prepare.chat_errors(example)
    finding = next(f for f in analysis.findings if f.id == f"chat_{category}")
    assert finding.level == "error"
    assert finding.rows == (1,)
    removal = next(f for f in analysis.findings if f.id == "chat_invalid_examples")
    assert removal.remediation is not None
    assert removal.remediation.necessary


CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "answer", "arguments": "{}"}}
    ],
}
TOOL = {"role": "tool", "content": "42", "tool_call_id": "1"}


def test_chat_accepts_tool_calls_and_weights() -> None:
    assert prepare.chat_errors(_chat(USER, CALL, TOOL, {**ASSISTANT, "weight": 0})) == []


def test_chat_refuses_what_the_schema_refuses_and_says_why() -> None:
    # A call with only an id used to pass here, then fail the training job.
    broken = {**CALL, "tool_calls": [{"id": "1"}]}
    rows = [_chat(SYSTEM, USER, ASSISTANT), _chat(USER, broken, TOOL, ASSISTANT)]

    analysis = prepare.analyze(rows)

    finding = next(f for f in analysis.findings if f.id == "chat_format_error")
    assert finding.rows == (1,)
    assert "row 1: `messages[1].tool_calls[0].type` must be" in finding.message
    assert analysis.rows == rows[:1]


def test_chat_warns_about_examples_with_nothing_to_learn_and_sums_up_tool_use() -> None:
    untrained = _chat(USER, {**ASSISTANT, "weight": 0})
    tools = [{"type": "function", "function": {"name": "answer"}}]
    rows = [
        {**_chat(USER, CALL, TOOL, {**ASSISTANT, "weight": 0}, ASSISTANT), "tools": tools},
        untrained,
    ]

    analysis = prepare.analyze(rows)

    warning = next(f for f in analysis.findings if f.id == "chat_nothing_to_learn")
    assert warning.level == "warning"
    assert warning.rows == (1,)
    summary = next(f for f in analysis.findings if f.id == "chat_tools")
    assert summary.message.startswith("1 examples define tools and 1 assistant messages call them")
    assert "1 of 3 assistant messages have weight 0" in summary.message


def test_chat_warnings_duplicates_and_fixes() -> None:
    good = _chat(SYSTEM, USER, ASSISTANT)
    rows = [good, _chat(USER, ASSISTANT), _chat(SYSTEM, ASSISTANT), good, _chat(USER)]

    analysis = prepare.analyze(rows)
    fixed, outputs = prepare.apply(analysis, [r.id for r in analysis.recommended])

    assert analysis.format == prepare.CHAT
    assert {"num_examples", "chat_missing_system", "chat_missing_user", "duplicates"} <= set(
        _ids(analysis)
    )
    assert next(f for f in analysis.findings if f.id == "num_examples").level == "warning"
    assert fixed == [good, _chat(USER, ASSISTANT), _chat(SYSTEM, ASSISTANT)]
    assert outputs.changed
    assert not outputs.split


# --- the upload page's column mapping ------------------------------------------------------


def test_rows_to_prompt_completion_and_chat() -> None:
    rows = [{"q": "Why?", "a": 42, "sys": ""}, {"q": "How?", "a": None, "sys": "Be kind."}]

    assert prepare.rows_to_prompt_completion(rows, prompt="q", completion="a") == [
        {"prompt": "Why?", "completion": "42"},
        {"prompt": "How?", "completion": ""},
    ]
    assert prepare.rows_to_prompt_completion(rows, prompt=None, completion="q")[0]["prompt"] == ""
    chat = prepare.rows_to_chat(rows, system="sys", system_text="", user="q", assistant="a")
    assert chat[0] == _chat(
        {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "42"}
    )
    assert chat[1]["messages"][0] == {"role": "system", "content": "Be kind."}
    fixed = prepare.rows_to_chat(rows, system=None, system_text="S", user="q", assistant="a")
    assert all(e["messages"][0] == {"role": "system", "content": "S"} for e in fixed)
