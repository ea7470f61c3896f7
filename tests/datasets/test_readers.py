"""Readers: the legacy formats with limits, zip bombs refused, and CSV written safely."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from datasets import readers
from datasets.readers import Limits, ReadError


def _read(name: str, data: bytes, **kwargs: Any) -> readers.ReadResult:
    return readers.read_any(io.BytesIO(data), name, **kwargs)


def _xlsx(rows: Sequence[Sequence[object]], *, sheets: int = 1) -> bytes:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(list(row))
    for i in range(1, sheets):
        workbook.create_sheet(f"extra{i}").append(["x"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


# --- CSV export -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell", ["=cmd|' /C calc'!A0", "+1+cmd", "-2+3", "@SUM(A1)", "\tx", "\r=1", "=HYPERLINK()"]
)
def test_csv_export_neutralises_formula_looking_cells(cell: str) -> None:
    data = readers.csv_bytes(["prompt", "completion"], [[cell, "ok"]]).decode()

    (row,) = list(csv.reader(io.StringIO(data, newline="")))[1:]
    assert row == ["'" + cell, "ok"]


@pytest.mark.parametrize("cell", ["-0.25", "+3", "1e-5", "plain text", "a=b", ""])
def test_csv_export_leaves_numbers_and_text_alone(cell: str) -> None:
    assert readers.neutralize_cell(cell) == cell


def test_csv_export_keeps_non_text_values() -> None:
    assert readers.neutralize_cell(-1.5) == -1.5
    assert readers.csv_bytes(None, [[1, None]]) == b"1,\r\n"


def test_csv_with_formula_cells_reads_as_text_and_exports_neutralised() -> None:
    source = b"prompt,completion\n\"=cmd|' /C calc'!A0\",@foo\n"

    read = _read("data.csv", source)
    exported = readers.csv_bytes(read.columns, [list(r.values()) for r in read.rows]).decode()

    assert read.rows == [{"prompt": "=cmd|' /C calc'!A0", "completion": "@foo"}]
    assert exported.splitlines()[1] == "'=cmd|' /C calc'!A0,'@foo"


# --- CSV and TSV ----------------------------------------------------------------------------


def test_csv_reads_like_the_legacy_tool() -> None:
    data = "\ufeffPrompt,completion,notes,notes\nhi,there,a,b\n\nshort\n".encode()

    read = _read("x.CSV", data)

    assert read.kind == "CSV"
    assert read.columns == ["Prompt", "completion", "notes", "notes.1"]  # pandas' mangling
    assert read.rows[1] == {"Prompt": "short", "completion": "", "notes": "", "notes.1": ""}
    assert len(read.rows) == 2  # the blank line is skipped
    assert read.message == "Based on your file extension, your file is formatted as a CSV file"
    assert read.conversion == "Your format `CSV` will be converted to `JSONL`"


def test_csv_keeps_na_like_text() -> None:
    read = _read("x.csv", b"prompt,completion\nNA,None\n")

    assert read.rows == [{"prompt": "NA", "completion": "None"}]


def test_tsv_reads_tabs() -> None:
    read = _read("x.tsv", b"prompt\tcompletion\na,b\tc\n")

    assert read.rows == [{"prompt": "a,b", "completion": "c"}]
    assert read.conversion == "Your format `TSV` will be converted to `JSONL`"


def test_csv_with_too_many_fields_names_the_line() -> None:
    with pytest.raises(ReadError, match=r"line 3: expected 2 fields, saw 3"):
        _read("x.csv", b"prompt,completion\na,b\na,b,c\n")


def test_csv_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(ReadError, match="does not appear to be in valid CSV format"):
        _read("x.csv", "prompt,completion\nh\u00e9,b\n".encode("utf-16"))


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (Limits(max_rows=3), "more than 3 rows"),
        (Limits(max_columns=1), "2 columns; the limit is 1"),
        (Limits(max_cells=5), "more than 5 cells"),
        (Limits(max_bytes=10), "the limit is 10 bytes"),
    ],
)
def test_csv_limits(limits: Limits, message: str) -> None:
    data = b"prompt,completion\n" + b"a,b\n" * 10

    with pytest.raises(ReadError, match=message):
        _read("x.csv", data, limits=limits)


def test_head_reads_only_the_first_rows() -> None:
    data = b"prompt,completion\n" + b"a,b\n" * 10

    read = _read("x.csv", data, limits=Limits(max_rows=3), head=2)

    assert len(read.rows) == 2


# --- XLSX ---------------------------------------------------------------------------------


def test_xlsx_reads_the_first_sheet_with_the_legacy_warning() -> None:
    data = _xlsx([["prompt", "completion"], ["a", 5.0], [None, None], ["b", 1.5], [None]], sheets=2)

    read = _read("book.xlsx", data)

    # Cells become text as pandas printed them; empty rows between data rows stay.
    assert read.rows == [
        {"prompt": "a", "completion": "5"},
        {"prompt": "", "completion": ""},
        {"prompt": "b", "completion": "1.5"},
    ]
    assert "more than one sheet" in (read.message or "")
    assert read.conversion == "Your format `XLSX` will be converted to `JSONL`"


def test_xlsx_cells_beyond_the_header_get_unnamed_columns() -> None:
    read = _read("book.xlsx", _xlsx([["prompt", "completion"], ["a", "b", "c"]]))

    assert read.columns == ["prompt", "completion", "Unnamed: 2"]
    assert read.rows == [{"prompt": "a", "completion": "b", "Unnamed: 2": "c"}]


def _with_saved_results(data: bytes, results: dict[str, str]) -> bytes:
    """The workbook as Excel would save it: each formula cell with its calculated value."""
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for item in source.infolist():
            content = source.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                for formula, value in results.items():
                    content = content.replace(
                        f"<f>{formula}</f><v />".encode(),
                        f"<f>{formula}</f><v>{value}</v>".encode(),
                    )
            target.writestr(item, content)
    return out.getvalue()


def test_xlsx_formulas_without_saved_results_are_refused_naming_the_cells() -> None:
    # openpyxl (like most scripts) saves no results: the cells would become empty completions.
    data = _xlsx([["prompt", "completion"], ["a", "=1+1"], ["b", "=2+2"], ["c", "ok"]])

    with pytest.raises(ReadError, match="formulas with no saved result in cells B2, B3") as caught:
        _read("book.xlsx", data)

    assert "save it" in caught.value.message


def test_xlsx_formulas_with_saved_results_use_them_and_say_so() -> None:
    data = _with_saved_results(_xlsx([["prompt", "completion"], ["a", "=1+1"]]), {"1+1": "2"})

    read = _read("book.xlsx", data)

    assert read.rows == [{"prompt": "a", "completion": "2"}]
    assert "1 cell hold formulas: their saved results were used" in (read.message or "")


def test_a_tsv_named_csv_is_read_by_its_tabs() -> None:
    read = _read("data.csv", b"prompt\tcompletion\nhello, there\tworld\n")

    assert read.columns == ["prompt", "completion"]
    assert read.rows == [{"prompt": "hello, there", "completion": "world"}]
    assert "separated by tabs, not commas" in (read.message or "")


def test_a_csv_with_commas_is_never_second_guessed() -> None:
    read = _read("data.csv", b"a,b\n1\t2,3\n")

    assert read.columns == ["a", "b"] and "separated" not in (read.message or "")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("qa.csv", b"What is two plus two?,4\nCapital of France?,Paris\n"),
        ("qa.tsv", b"What is two plus two?\t4\nCapital of France?\tParis\n"),
        ("qa.xlsx", _xlsx([["What is two plus two?", 4], ["Capital of France?", "Paris"]])),
    ],
)
def test_a_table_without_a_header_says_so_and_can_be_read_as_data(name: str, data: bytes) -> None:
    guessed = _read(name, data)
    as_data = _read(name, data, header=False)

    assert guessed.header_looks_like_data
    assert "looks like data rather than column names" in (guessed.message or "")
    assert len(guessed.rows) == 1  # the first row became the header
    assert as_data.columns == ["column 1", "column 2"]
    assert as_data.rows == [
        {"column 1": "What is two plus two?", "column 2": "4"},
        {"column 1": "Capital of France?", "column 2": "Paris"},
    ]
    assert not as_data.header_looks_like_data


def test_a_real_header_is_not_called_data() -> None:
    read = _read("qa.csv", b"question,answer\nWhat is two plus two?,4\n")

    assert not read.header_looks_like_data


def test_xlsx_row_limit() -> None:
    data = _xlsx([["prompt", "completion"]] + [["a", "b"]] * 20)

    with pytest.raises(ReadError, match="more than 10 rows"):
        _read("book.xlsx", data, limits=Limits(max_rows=10))


def _bomb(member_bytes: int) -> bytes:
    """A valid workbook plus a member of zeros that deflates ~1000:1."""
    buffer = io.BytesIO(_xlsx([["prompt", "completion"], ["a", "b"]]))
    with (
        zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("xl/media/bomb.bin", "w") as member,
    ):
        for _ in range(member_bytes >> 20):
            member.write(b"\0" * (1 << 20))
    return buffer.getvalue()


def test_zip_bomb_xlsx_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _bomb(20 << 20)
    assert len(data) < 200_000  # 20 MiB inflated from a few KB

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("openpyxl must not see a zip bomb")

    monkeypatch.setattr(openpyxl, "load_workbook", never)
    with pytest.raises(ReadError, match="looks like a zip bomb"):
        _read("bomb.xlsx", data)


def test_xlsx_over_the_decompressed_size_limit_is_refused() -> None:
    with pytest.raises(ReadError, match="would decompress to"):
        _read("big.xlsx", _bomb(2 << 20), limits=Limits(max_xlsx_uncompressed=1 << 20))


def test_xlsx_that_is_not_a_zip_is_refused() -> None:
    with pytest.raises(ReadError, match="does not appear to be in valid XLSX format"):
        _read("book.xlsx", b"prompt,completion\n")


# --- JSON, JSONL, TXT ---------------------------------------------------------------------


def test_jsonl_invalid_line_is_named() -> None:
    data = b'{"prompt": "a", "completion": "b"}\n\n{"prompt": oops}\n'

    with pytest.raises(ReadError, match=r"valid JSONL format.*\(line 3: Expecting value\)"):
        _read("x.jsonl", data)


def test_jsonl_holding_one_array_is_json_in_disguise() -> None:
    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]

    read = _read("x.jsonl", json.dumps(rows).encode())

    assert read.rows == rows
    assert (read.message or "").startswith("Your JSONL file appears to be")


def test_jsonl_with_one_object_is_one_example() -> None:
    read = _read("x.jsonl", b'{"prompt": "a", "completion": "b"}')

    assert read.rows == [{"prompt": "a", "completion": "b"}]
    assert read.message is None


def test_json_array_and_json_that_is_jsonl() -> None:
    array = _read("x.json", b'[\n {"prompt": "a", "completion": "b"}\n]')
    lines = _read(
        "x.json", b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n'
    )

    assert array.rows == [{"prompt": "a", "completion": "b"}]
    assert array.conversion == "Your format `JSON` will be converted to `JSONL`"
    assert len(lines.rows) == 2
    assert (lines.message or "").startswith("Your JSON file appears to be in a JSONL format")


def test_txt_lines_are_completions() -> None:
    read = _read("x.txt", b"one\r\ntwo\n")

    assert read.rows == [
        {"prompt": "", "completion": "one"},
        {"prompt": "", "completion": "two"},
        {"prompt": "", "completion": ""},
    ]


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="ends with the extension `.md` which is not supported"):
        _read("notes.md", b"")
    with pytest.raises(ReadError, match="is missing a file extension"):
        _read("README", b"")
    with pytest.raises(ReadError, match="does not exist"):
        readers.read_path(tmp_path / "nope.jsonl")


def test_lenient_jsonl_keeps_line_numbers_and_lists_bad_lines() -> None:
    data = (
        b'{"prompt": "a", "completion": "b"}\nnot json\n[1]\n\n{"prompt": "c", "completion": "d"}\n'
    )

    read = readers.read_jsonl_lenient(io.BytesIO(data))

    assert read.line_numbers == [1, 5]
    assert [line for line, _ in read.skipped] == [2, 3]


def test_an_oversized_jsonl_line_is_skipped_without_reading_it_whole() -> None:
    data = b'{"prompt": "' + b"x" * 5000 + b'"}\n{"prompt": "a", "completion": "b"}\n'

    read = readers.read_jsonl_lenient(io.BytesIO(data), limits=Limits(max_cell_chars=1000))

    assert read.line_numbers == [2]
    assert read.skipped == [(1, "the line is longer than 1,000 bytes")]


def test_a_zip_that_is_not_a_workbook_is_refused_with_a_message() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")

    with pytest.raises(ReadError, match="does not appear to be in valid XLSX format"):
        _read("book.xlsx", buffer.getvalue())
