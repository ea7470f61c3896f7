"""Property-based fuzzing of the dataset readers and the validator (issue #11).

Whatever bytes a file holds, `datasets.validation.analyse_stream` never raises, and every line
an independent oracle (the standard library's json) finds broken is reported with its line
number; the readers behind the dataset pages only ever raise their own ReadError.

Bounded for CI; `FUZZ_EXAMPLES=5000 pytest tests/datasets/test_fuzz_validation.py` hunts
longer (docs/security.md).
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets import readers, validation

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize="FUZZ_EXAMPLES" not in os.environ,  # CI runs the same cases every time
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
row_keys = st.sampled_from(
    ["prompt", "completion", "messages", "role", "content", "tool_calls", "weight", "x"]
)
messages = st.lists(
    st.dictionaries(
        st.sampled_from(["role", "content", "weight", "tool_calls", "name", "function_call"]),
        st.sampled_from(["system", "user", "assistant", "tool", "function", "nope"]) | json_values,
        max_size=4,
    ),
    max_size=4,
)
rows = st.one_of(
    st.fixed_dictionaries({"prompt": st.text(max_size=30), "completion": st.text(max_size=30)}),
    st.fixed_dictionaries({"messages": messages}),
    st.dictionaries(row_keys, json_values, max_size=4),
    json_values,
)
hostile = st.sampled_from(
    [
        b"[" * 5000,
        b'{"prompt": "' + b"[" * 100 + b'", "completion": ' + b"[" * 2000 + b"}",
        b'{"prompt": "\\ud800", "completion": " x"}',
        b'{"prompt": "a\\u0000", "completion": " x"}',
        b'{"prompt": NaN, "completion": " x"}',
        b'{"prompt": 1e999, "completion": " x"}',
        b'{"prompt": "x", "completion": 123456789012345678901234567890}',
        b'{"messages": [{"role": "assistant", "content": null, "tool_calls": '
        + b"[" * 900
        + b"]" * 900
        + b"}]}",
        b"\xff\xfe\x00",
        b"\xef\xbb\xbf",
        b"",
        b"   ",
        b"\r",
    ]
)
lines = st.lists(
    st.one_of(
        rows.map(lambda row: json.dumps(row, allow_nan=True).encode()),
        rows.map(lambda row: json.dumps(row, ensure_ascii=False).encode()),
        st.binary(max_size=60).filter(lambda b: b"\n" not in b),
        hostile,
    ),
    min_size=1,
    max_size=12,
)


def oracle_bad(raw: bytes) -> bool:
    """A line any JSONL validator must reject: not a JSON object by the standard library."""
    try:
        return not isinstance(json.loads(raw), dict)
    except (ValueError, RecursionError):
        return True


def analyse(data: bytes) -> validation.Report:
    return validation.analyse_stream(
        io.BytesIO(data).read, counter=None, context_length=512, max_errors=1000
    )


@FUZZ
@given(lines=lines, trailing_newline=st.booleans())
def test_the_validator_never_raises_and_reports_every_bad_line(
    lines: list[bytes], trailing_newline: bool
) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")

    report = analyse(data)

    assert report.error_count >= len(report.errors)
    numbers = [e["line"] for e in report.errors if e["line"] is not None]
    assert all(1 <= n <= len(lines) for n in numbers)
    assert all(isinstance(e["message"], str) and e["message"] for e in report.errors)
    json.dumps(report.errors, ensure_ascii=False).encode("utf-8")  # storable and showable
    try:
        validation.sniff(data[: validation.CHUNK_BYTES])
    except validation.FatalFileError:
        assert [e["line"] for e in report.errors] == [1]  # one verdict on the whole file
        return
    reported = set(numbers)
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(validation.BOM_UTF8):
            assert 1 in reported  # the BOM itself is an error
            continue
        # An empty last piece without a trailing newline is no line at all ("a\n" + "").
        no_line = number == len(lines) and raw == b"" and not trailing_newline
        if oracle_bad(raw) and not no_line:
            assert number in reported, (number, raw[:80], report.errors)
    if report.ok:
        assert report.stats["examples"] >= 1


@FUZZ
@given(lines=lines)
def test_the_lenient_reader_never_raises_and_keeps_line_numbers(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n"

    read = readers.read_jsonl_lenient(io.BytesIO(data))

    assert read.line_numbers is not None
    assert read.line_numbers == sorted(read.line_numbers)
    kept_and_skipped = set(read.line_numbers) | {n for n, _ in read.skipped}
    assert kept_and_skipped <= set(range(1, len(lines) + 1))
    for row in read.rows:
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # no lone surrogates survive
        assert "\x00" not in json.dumps(row, ensure_ascii=False)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=300), lines.map(lambda ls: b"\n".join(ls))),
    name=st.sampled_from(["d.jsonl", "d.json", "d.csv", "d.tsv", "d.txt", "d.xlsx"]),
    header=st.booleans(),
)
def test_read_any_raises_only_read_errors(data: bytes, name: str, header: bool) -> None:
    try:
        read: Any = readers.read_any(io.BytesIO(data), name, header=header)
    except readers.ReadError as error:
        message = error.message
        read = None
    else:
        message = "read"
    assert message  # a ReadError always says why
    for row in read.rows if read is not None else []:
        json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
