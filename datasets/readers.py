"""Read CSV, TSV, XLSX, JSON, JSONL and TXT datasets with limits, and write CSV safely.

The readers reproduce what the legacy `openai tools fine_tunes.prepare_data` accepted
(`read_any_format` in openai 0.28.1 validators.py), with its messages, but without loading the
file through pandas: every format is read with bounded memory and explicit limits, so a hostile
upload (a zip bomb, a million-column sheet, a 2 GB line) is refused with a message instead of
taking the process down. Nothing here imports Django: the `prepare_data` command, the upload
pages and the validation worker all use it.

Deliberate differences from the legacy reader (each was a bug there):
* JSON `null` and a missing key read as "" (pandas turned them into "None" and "nan").
* CSV cells such as "NA", "null" or "None" stay text (pandas made them empty, so the row was
  later dropped as an "empty completion").
* A JSONL file with a single object is one example (pandas raised, so the tool refused it).
* A `.json` file holding an array is converted to JSONL like the other non-JSONL formats (the
  legacy tool suggested uploading the `.json` file as is, which the API rejects).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import itertools
import json
import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from common.safejson import MAX_DEPTH, JsonProblem, nul_path, surrogate_path, too_deep
from datasets.validation import duplicate_key

EXTENSIONS = (".csv", ".tsv", ".xlsx", ".txt", ".json", ".jsonl")
FIELDS = ("prompt", "completion")


@dataclass(frozen=True)
class Limits:
    """Upper bounds for one file. The defaults fit the 512 MiB upload limit."""

    max_bytes: int = 512 * 1024 * 1024  # the raw file
    max_rows: int = 2_000_000
    max_columns: int = 1_000
    max_cells: int = 20_000_000
    max_cell_chars: int = 16 * 1024 * 1024  # one CSV field / one JSONL line
    # A whole JSON document is parsed in memory (an array can't be streamed by the stdlib).
    max_json_bytes: int = 256 * 1024 * 1024
    # XLSX is a zip: refuse it on its declared sizes before a single byte is inflated.
    max_xlsx_uncompressed: int = 256 * 1024 * 1024
    max_xlsx_ratio: int = 100
    max_zip_entries: int = 10_000


DEFAULT_LIMITS = Limits()


class ReadError(ValueError):
    """The file can't be read; `message` is the legacy tool's wording plus the line or limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class ReadResult:
    """Rows as read: dicts of str for tables (CSV, TSV, XLSX, TXT), raw JSON values otherwise."""

    kind: str  # CSV | TSV | XLSX | TXT | JSON | JSONL
    rows: list[Any]
    columns: list[str] = field(default_factory=list)
    # The legacy immediate message (may hold several "\n- " bullets) and necessary remediation.
    message: str | None = None
    conversion: str | None = None
    # JSONL read leniently: the 1-based line of each row, and the lines left out (line, why).
    line_numbers: list[int] | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)
    # Tables: whether the first row was read as column names, and whether it looks like data.
    header: bool = True
    header_looks_like_data: bool = False


def extension_error(filename: str) -> str:
    message = (
        "Your file must have one of the following extensions: "
        ".CSV, .TSV, .XLSX, .TXT, .JSON or .JSONL"
    )
    if "." in filename:
        return (
            message + f" Your file `{filename}` ends with the extension "
            f"`.{filename.split('.')[-1]}` which is not supported."
        )
    return message + f" Your file `{filename}` is missing a file extension."


def invalid_format(filename: str, detail: str | None = None) -> ReadError:
    kind = filename.split(".")[-1].upper()
    message = (
        f"Your file `{filename}` does not appear to be in valid {kind} format. "
        f"Please ensure your file is formatted as a valid {kind} file."
    )
    return ReadError(f"{message} ({detail})" if detail else message)


def kind_of(filename: str) -> str | None:
    lower = filename.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext):
            return ext[1:].upper()
    return None


def read_path(
    path: str | os.PathLike[str], *, limits: Limits = DEFAULT_LIMITS, header: bool = True
) -> ReadResult:
    """Read a local file; `path` is also the name used in messages (as the CLI echoes it)."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise ReadError(f"File {name} does not exist.")
    if kind_of(name) is None:
        raise ReadError(extension_error(name))
    with open(name, "rb") as fh:
        return read_any(fh, name, limits=limits, header=header)


def read_any(
    fh: IO[bytes],
    filename: str,
    *,
    limits: Limits = DEFAULT_LIMITS,
    head: int | None = None,
    header: bool = True,
) -> ReadResult:
    """Read an open binary file whose format is given by `filename`'s extension.

    With `head`, stop after that many rows (a preview): the row limits then don't apply.
    `header=False` reads the first row of a table (CSV, TSV, XLSX) as data, naming the columns
    `column 1`, `column 2`, ...; with the default, a first row that looks like data is said so
    in the message (`ReadResult.header_looks_like_data`).
    """
    kind = kind_of(filename)
    if kind is None:
        raise ReadError(extension_error(filename))
    size = _size_of(fh)
    if size is not None and size > limits.max_bytes:
        raise ReadError(
            f"Your file `{filename}` is {size:,} bytes; the limit is {limits.max_bytes:,} bytes."
        )
    try:
        if kind in ("CSV", "TSV"):
            return _read_delimited(fh, filename, kind, limits, head, header)
        if kind == "XLSX":
            return _read_xlsx(fh, filename, limits, head, header)
        if kind == "TXT":
            return _head(_read_txt(fh, filename, limits), head)
        if kind == "JSONL":
            return _head(_read_jsonl(fh, filename, limits, head), head)
        return _head(_read_json(fh, filename, limits), head)
    except UnicodeDecodeError as exc:
        raise invalid_format(filename, f"not UTF-8 text: {exc.reason} at byte {exc.start}")


def _head(result: ReadResult, head: int | None) -> ReadResult:
    if head is not None:
        result.rows = result.rows[:head]
    return result


def _size_of(fh: IO[bytes]) -> int | None:
    try:
        position = fh.tell()
        fh.seek(0, io.SEEK_END)
        size = fh.tell()
        fh.seek(position)
    except (OSError, AttributeError, ValueError):
        return None
    return size


def _text(fh: IO[bytes]) -> io.TextIOWrapper:
    # utf-8-sig drops a BOM, as pandas does; newline="" leaves line endings to the csv module.
    return io.TextIOWrapper(fh, encoding="utf-8-sig", newline="")


def _detach(wrapper: io.TextIOWrapper) -> None:
    # Don't let the wrapper close the caller's file (an upload still to be stored, say).
    try:
        wrapper.detach()
    except ValueError:
        pass


def mangle_duplicates(names: Sequence[str]) -> list[str]:
    """pandas' header rule: a repeated name gets `.1`, `.2`, ... (the legacy tool saw those)."""
    seen: dict[str, int] = {}
    result = []
    for name in names:
        if name in seen:
            count = seen[name]
            candidate = f"{name}.{count}"
            while candidate in seen:
                count += 1
                candidate = f"{name}.{count}"
            seen[name] = count + 1
            seen[candidate] = 1
            result.append(candidate)
        else:
            seen[name] = 1
            result.append(name)
    return result


def _header(cells: Sequence[Any]) -> list[str]:
    # pandas names an empty header cell "Unnamed: <position>".
    names = [
        (cell_text(value) or f"Unnamed: {i}") if value is not None else f"Unnamed: {i}"
        for i, value in enumerate(cells)
    ]
    return mangle_duplicates(names)


def _columns_without_header(width: int) -> list[str]:
    return [f"column {i + 1}" for i in range(width)]


def looks_like_data(cells: Sequence[Any]) -> bool:
    """Whether a first row reads as an example rather than as column names: a number, a long
    text or a sentence in it. (Headers are short labels: prompt, question, label...)"""
    texts = [cell_text(cell).strip() for cell in cells]
    return any(
        _NUMBER.fullmatch(text) or len(text) > 40 or len(text.split()) >= 5
        for text in texts
        if text
    )


HEADER_HINT = (
    "\n- The first row ({cells}) looks like data rather than column names. If the file has no "
    'header row, choose "First row is data" (`--no-header` for `manage.py prepare_data`) so '
    "that it is kept as an example."
)


def _header_hint(cells: Sequence[Any]) -> str:
    shown = ", ".join(f"`{cell_text(c)[:30]}`" for c in list(cells)[:3])
    return HEADER_HINT.format(cells=shown)


DELIMITERS = {",": "commas", "\t": "tabs", ";": "semicolons", "|": "vertical bars"}


def _sniff_delimiter(fh: IO[bytes], kind: str) -> tuple[str, str]:
    """The delimiter of a CSV/TSV, and a note if it isn't the one its extension says.

    A TSV saved as `.csv` (or the reverse) would otherwise read as one column holding whole
    lines. Only the first line is looked at, and only when it holds none of the expected
    delimiter: a real CSV with commas is never second-guessed.
    """
    expected = "," if kind == "CSV" else "\t"
    try:
        position = fh.tell()
        sample = fh.read(64 * 1024)
        fh.seek(position)
    except (OSError, AttributeError, ValueError):
        return expected, ""
    first = sample.decode("utf-8", errors="ignore").lstrip("\ufeff").split("\n", 1)[0]
    unquoted = re.sub(r'"[^"]*"', "", first)
    if expected in unquoted:
        return expected, ""
    counts = {d: unquoted.count(d) for d in DELIMITERS if d != expected}
    found = max(counts, key=lambda d: counts[d])
    if not counts[found]:
        return expected, ""
    return found, (
        f"\n- Your file is named .{kind.lower()} but its columns are separated by "
        f"{DELIMITERS[found]}, not {DELIMITERS[expected]}: it was read that way."
    )


def _check_table(rows: int, columns: int, limits: Limits, filename: str) -> None:
    if rows > limits.max_rows:
        raise ReadError(
            f"Your file `{filename}` has more than {limits.max_rows:,} rows; split it into "
            "smaller files."
        )
    if columns > limits.max_columns:
        raise ReadError(
            f"Your file `{filename}` has {columns:,} columns; the limit is {limits.max_columns:,}."
        )
    if rows * columns > limits.max_cells:
        raise ReadError(
            f"Your file `{filename}` has more than {limits.max_cells:,} cells; split it into "
            "smaller files."
        )


def _read_delimited(
    fh: IO[bytes], filename: str, kind: str, limits: Limits, head: int | None, has_header: bool
) -> ReadResult:
    separator, note = _sniff_delimiter(fh, kind)
    # The csv module's limit is process-wide; every reader sets the same bound.
    csv.field_size_limit(limits.max_cell_chars)
    text = _text(fh)
    suspect = False
    try:
        reader = csv.reader(text, delimiter=separator)
        try:
            first = next(reader)
        except StopIteration:
            raise invalid_format(filename, "the file is empty") from None
        if has_header:
            header = _header(first)
            suspect = looks_like_data(first)
            note += _header_hint(first) if suspect else ""
        else:
            header = _columns_without_header(len(first))
        width = len(header)
        _check_table(0, width, limits, filename)
        rows: list[dict[str, str]] = []
        if not has_header:
            rows.append(dict(zip(header, first, strict=True)))
        for cells in reader:
            if not cells:  # pandas skips blank lines
                continue
            if len(cells) > width:
                raise invalid_format(
                    filename,
                    f"line {reader.line_num}: expected {width} fields, saw {len(cells)}",
                )
            cells = cells + [""] * (width - len(cells))
            rows.append(dict(zip(header, cells, strict=True)))
            if head is not None and len(rows) >= head:
                break
            if len(rows) > limits.max_rows or len(rows) * width > limits.max_cells:
                _check_table(len(rows), width, limits, filename)
    except csv.Error as exc:
        raise invalid_format(filename, f"line {reader.line_num}: {exc}") from None
    finally:
        _detach(text)
    return ReadResult(
        kind=kind,
        rows=rows,
        columns=header,
        message=f"Based on your file extension, your file is formatted as a {kind} file" + note,
        conversion=f"Your format `{kind}` will be converted to `JSONL`",
        header=has_header,
        header_looks_like_data=suspect,
    )


def check_xlsx_zip(fh: IO[bytes], filename: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Refuse a zip bomb on the archive's declared sizes, before anything is decompressed.

    zipfile never inflates a member past its declared size, so a lying header can't get round
    this check either.
    """
    try:
        with zipfile.ZipFile(fh) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise invalid_format(filename, f"not an XLSX (zip) archive: {exc}") from None
    finally:
        fh.seek(0)
    if len(members) > limits.max_zip_entries:
        raise ReadError(
            f"Your file `{filename}` holds {len(members):,} archive entries; refusing it "
            f"(the limit is {limits.max_zip_entries:,})."
        )
    total = sum(member.file_size for member in members)
    if total > limits.max_xlsx_uncompressed:
        raise ReadError(
            f"Your file `{filename}` would decompress to {total:,} bytes; refusing it "
            f"(the limit is {limits.max_xlsx_uncompressed:,} bytes)."
        )
    for member in members:
        # Tiny members compress absurdly well (a run of zeros); only judge sizable ones.
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > 1024 * 1024 and ratio > limits.max_xlsx_ratio:
            raise ReadError(
                f"Your file `{filename}` looks like a zip bomb: `{member.filename}` expands "
                f"{ratio:,.0f} times (the limit is {limits.max_xlsx_ratio})."
            )


def _read_xlsx(
    fh: IO[bytes], filename: str, limits: Limits, head: int | None, has_header: bool = True
) -> ReadResult:
    check_xlsx_zip(fh, filename, limits)
    try:
        return _parse_xlsx(fh, filename, limits, head, has_header)
    except ReadError:
        raise
    except Exception as exc:
        # openpyxl fails on malformed workbooks in many ways (KeyError for a missing part, XML
        # ParseError, TypeError...): each one is the file's fault, reported as such.
        raise invalid_format(filename, str(exc) or type(exc).__name__) from None


class _Formulas:
    """Formula cells, read from a second pass over the sheet with formulas kept.

    `data_only` gives a formula cell's saved result, or None when the file has none (written by
    a library that doesn't calculate): that None would silently become an empty completion.
    """

    def __init__(self, rows: Iterator[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.number = 0
        self.missing: list[str] = []
        self.missing_count = 0
        self.cached = 0

    def check(self, values: Sequence[Any]) -> None:
        from openpyxl.utils import get_column_letter

        self.number += 1
        formulas = next(self.rows, ())
        for column, (value, formula) in enumerate(zip(values, formulas, strict=False), start=1):
            if not (isinstance(formula, str) and formula.startswith("=")) or formula == value:
                continue
            if value is None:
                self.missing_count += 1
                if len(self.missing) < 10:
                    self.missing.append(f"{get_column_letter(column)}{self.number}")
            else:
                self.cached += 1

    def verdict(self, filename: str) -> str:
        """A note on formulas whose saved results were used; ReadError if some have none."""
        if self.missing:
            more = self.missing_count - len(self.missing)
            cells = ", ".join(self.missing) + (f" and {more:,} more" if more > 0 else "")
            raise ReadError(
                f"Your file `{filename}` has formulas with no saved result in cells {cells}: "
                "the program that wrote it didn't calculate them, so there is no text to train "
                "on. Open the file in Excel or LibreOffice and save it (which stores the "
                "results), or replace the formulas with their values."
            )
        if self.cached:
            return (
                f"\n- {self.cached:,} cell{'s' if self.cached != 1 else ''} hold formulas: "
                "their saved results were used."
            )
        return ""


def _parse_xlsx(
    fh: IO[bytes], filename: str, limits: Limits, head: int | None, has_header: bool
) -> ReadResult:
    import openpyxl

    # data_only: cached values, never formulas; read_only: rows are streamed.
    workbook = openpyxl.load_workbook(fh, read_only=True, data_only=True, keep_links=False)
    with_formulas = openpyxl.load_workbook(fh, read_only=True, data_only=False, keep_links=False)
    suspect = False
    try:
        message = "Based on your file extension, your file is formatted as an Excel file"
        if len(workbook.sheetnames) > 1:
            message += (
                "\n- Your Excel file contains more than one sheet. Please either save as csv or "
                "ensure all data is present in the first sheet. WARNING: Reading only the "
                "first sheet..."
            )
        sheet = workbook.worksheets[0]
        formulas = _Formulas(with_formulas.worksheets[0].iter_rows(values_only=True))
        # The declared dimensions can lie, so they are checked here and counted again below.
        declared_rows, declared_columns = sheet.max_row or 0, sheet.max_column or 0
        _check_table(max(declared_rows - 1, 0), declared_columns, limits, filename)
        values = sheet.iter_rows(values_only=True)
        header_cells = next(values, None)
        if header_cells is None:
            raise invalid_format(filename, "the first sheet is empty")
        formulas.check(header_cells)
        first = _trim(header_cells[: limits.max_columns + 1])
        if has_header:
            header = _header(first)
            suspect = looks_like_data(first)
            message += _header_hint(first) if suspect else ""
        else:
            header = _columns_without_header(len(first))
        width = len(header)
        _check_table(0, width, limits, filename)
        rows: list[dict[str, str]] = []
        pending_blank: list[dict[str, str]] = []
        data = values if has_header else itertools.chain([header_cells], values)
        for index, cells in enumerate(data):
            if has_header or index:
                formulas.check(cells)
            texts = [cell_text(value) for value in cells[: limits.max_columns + 1]]
            used = len(_trim(texts))
            if used > width:
                # pandas names the columns beyond the header "Unnamed: <position>".
                header += mangle_duplicates([f"Unnamed: {i}" for i in range(width, used)])
                width = used
                _check_table(len(rows), width, limits, filename)
            texts = (texts + [""] * width)[:width]
            row = dict(zip(header, texts, strict=True))
            # pandas drops trailing empty rows but keeps empty rows between data rows.
            if any(texts):
                rows.extend(pending_blank)
                pending_blank.clear()
                rows.append(row)
                if head is not None and len(rows) >= head:
                    break
            else:
                pending_blank.append(row)
            if len(rows) + len(pending_blank) > limits.max_rows:
                _check_table(len(rows) + len(pending_blank), width, limits, filename)
        message += formulas.verdict(filename)
    finally:
        workbook.close()
        with_formulas.close()
    _check_table(len(rows), width, limits, filename)
    for row in rows:  # rows read before the header grew
        for name in header[len(row) :]:
            row[name] = ""
    return ReadResult(
        kind="XLSX",
        rows=rows,
        columns=header,
        message=message,
        conversion="Your format `XLSX` will be converted to `JSONL`",
        header=has_header,
        header_looks_like_data=suspect,
    )


def _trim(cells: Sequence[Any]) -> list[Any]:
    cells = list(cells)
    while cells and (cells[-1] is None or cells[-1] == ""):
        cells.pop()
    return cells


def cell_text(value: Any) -> str:
    """A spreadsheet or JSON value as the text a prompt or completion holds."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # Excel stores 3 as 3.0; pandas printed "3"
    if isinstance(value, dt.datetime | dt.date | dt.time | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _read_txt(fh: IO[bytes], filename: str, limits: Limits) -> ReadResult:
    text = _read_text(fh, filename, limits.max_bytes)
    # Universal newlines, as the legacy open(); every line is a completion with no prompt.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    _check_table(len(lines), 2, limits, filename)
    return ReadResult(
        kind="TXT",
        rows=[{"prompt": "", "completion": line} for line in lines],
        columns=list(FIELDS),
        message="Based on your file extension, you provided a text file",
        conversion="Your format `TXT` will be converted to `JSONL`",
    )


def _read_text(fh: IO[bytes], filename: str, limit: int) -> str:
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise ReadError(f"Your file `{filename}` is larger than {limit:,} bytes.")
    return codecs.decode(data, "utf-8-sig")


# A JSON escape of a UTF-16 surrogate: only text holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def loads(raw: bytes | str) -> Any:
    """`json.loads` (the legacy tool's reading: NaN, big integers) within common.safejson's
    limits: nesting past MAX_DEPTH and lone surrogates raise JsonProblem (a ValueError), never
    a RecursionError here or a UnicodeEncodeError wherever the value is shown or written."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonProblem(f"nested more than {MAX_DEPTH} levels deep") from None
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # Cheap byte scans first: the walks below only run for rows that could fail them.
    if data.count(b"[") + data.count(b"{") > MAX_DEPTH and too_deep(value):
        raise JsonProblem(f"nested more than {MAX_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(data):
        path = surrogate_path(value)
        if path is not None:
            where = f" in `{path}`" if path else ""
            raise JsonProblem(f"holds a lone UTF-16 surrogate escape{where}, which is not text")
    if b"\\u0000" in data:
        path = nul_path(value)
        if path is not None:
            where = f" in `{path}`" if path else ""
            raise JsonProblem(f"holds a NUL character (\\u0000){where}")
    return value


def iter_jsonl(
    fh: IO[bytes], *, max_line_bytes: int = DEFAULT_LIMITS.max_cell_chars
) -> Iterator[tuple[int, Any | Exception]]:
    """(line number, parsed value or the exception) for every non-blank line, streaming."""
    for number, raw in enumerate(_lines(fh, max_line_bytes), start=1):
        if isinstance(raw, Exception):
            yield number, raw
            continue
        if number == 1 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        if not raw.strip():
            continue
        try:
            value = loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, JsonProblem) as exc:
            yield number, exc
            continue
        key = duplicate_key(raw, value)
        if key is not None:
            # json.loads kept the last of the two silently; the user should say which they mean.
            yield number, ReadError(f"the key {json.dumps(key)} appears twice in one object")
            continue
        yield number, value


def _lines(fh: IO[bytes], max_line_bytes: int) -> Iterator[bytes | Exception]:
    while True:
        line = fh.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            # Skip the rest of an oversized line without holding it.
            while line and not line.endswith(b"\n"):
                line = fh.readline(1024 * 1024)
            yield ReadError(f"the line is longer than {max_line_bytes:,} bytes")
            continue
        yield line


def _read_jsonl(fh: IO[bytes], filename: str, limits: Limits, head: int | None) -> ReadResult:
    rows = _strict_jsonl(fh, filename, limits, head)
    if len(rows) == 1 and isinstance(rows[0], list):
        # One line holding an array: JSON in disguise (the legacy message).
        return ReadResult(
            kind="JSONL",
            rows=_check_rows(rows[0], filename, limits),
            message=(
                "Your JSONL file appears to be in a JSON format. Your file will be converted "
                "to JSONL format"
            ),
            conversion="Your format `JSON` will be converted to `JSONL`",
        )
    return ReadResult(kind="JSONL", rows=rows)


def _strict_jsonl(
    fh: IO[bytes], filename: str, limits: Limits, head: int | None = None
) -> list[Any]:
    rows: list[Any] = []
    for number, value in iter_jsonl(fh, max_line_bytes=limits.max_cell_chars):
        if isinstance(value, Exception):
            detail = value.msg if isinstance(value, json.JSONDecodeError) else str(value)
            raise invalid_format(filename, f"line {number}: {detail}")
        rows.append(value)
        if head is not None and len(rows) > head:
            break  # one more than asked: enough to tell JSONL from a one-line array
        if len(rows) > limits.max_rows:
            _check_table(len(rows), 1, limits, filename)
    return rows


def read_jsonl_lenient(fh: IO[bytes], *, limits: Limits = DEFAULT_LIMITS) -> ReadResult:
    """Read stored JSONL, keeping line numbers and leaving out (and listing) unreadable lines.

    The dataset page analyses files that failed validation too: "Apply fixes" can then write a
    clean copy without the broken lines.
    """
    rows: list[Any] = []
    numbers: list[int] = []
    skipped: list[tuple[int, str]] = []
    for number, value in iter_jsonl(fh, max_line_bytes=limits.max_cell_chars):
        if isinstance(value, Exception):
            reason = value.msg if isinstance(value, json.JSONDecodeError) else str(value)
            skipped.append((number, reason))
        elif not isinstance(value, dict):
            skipped.append((number, "not a JSON object"))
        else:
            rows.append(value)
            numbers.append(number)
        if len(rows) > limits.max_rows:
            _check_table(len(rows), 1, limits, "the file")
    return ReadResult(kind="JSONL", rows=rows, line_numbers=numbers, skipped=skipped)


def _check_rows(rows: list[Any], filename: str, limits: Limits) -> list[Any]:
    _check_table(len(rows), 1, limits, filename)
    return rows


def _read_json(fh: IO[bytes], filename: str, limits: Limits) -> ReadResult:
    text = _read_text(fh, filename, limits.max_json_bytes)
    try:
        document = loads(text)
    except JsonProblem as problem:
        raise invalid_format(filename, problem.message) from None
    except json.JSONDecodeError as whole_error:
        # Maybe JSONL saved as .json (the legacy tool tried lines first).
        try:
            rows = _strict_jsonl(io.BytesIO(text.encode()), filename, limits)
        except ReadError:
            raise invalid_format(
                filename, f"line {whole_error.lineno}: {whole_error.msg}"
            ) from None
        return ReadResult(
            kind="JSON",
            rows=rows,
            message=(
                "Your JSON file appears to be in a JSONL format. Your file will be converted "
                "to JSONL format"
            ),
            conversion="Your format `JSON` will be converted to `JSONL`",
        )
    rows = document if isinstance(document, list) else [document]
    return ReadResult(
        kind="JSON",
        rows=_check_rows(rows, filename, limits),
        message="Based on your file extension, your file is formatted as a JSON file",
        conversion="Your format `JSON` will be converted to `JSONL`",
    )


def columns_of(rows: Iterable[Any]) -> list[str]:
    """The union of the rows' keys in order of first appearance (pandas' column order)."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            for key in row:
                seen.setdefault(str(key), None)
    return list(seen)


# --- writing CSV ---------------------------------------------------------------------------

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralize_cell(value: Any) -> Any:
    """Make a cell inert in spreadsheet apps (CSV injection): prefix formula-looking text with '.

    Plain numbers such as "-0.25" are left alone: they are data, not formulas, and results files
    must stay numeric.
    """
    if (
        isinstance(value, str)
        and value.startswith(FORMULA_PREFIXES)
        and not _NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def write_csv(
    out: IO[str],
    header: Sequence[Any] | None,
    rows: Iterable[Sequence[Any]],
    *,
    delimiter: str = ",",
) -> None:
    """Write CSV with every cell neutralised; use this wherever Tunery writes CSV.

    `header` None writes rows only (a continuation of a streamed file).
    """
    # CRLF (RFC 4180): with a bare "\n" terminator the csv module leaves a lone "\r" unquoted.
    writer = csv.writer(out, delimiter=delimiter, lineterminator="\r\n")
    if header is not None:
        writer.writerow([neutralize_cell(cell) for cell in header])
    for row in rows:
        writer.writerow([neutralize_cell(cell) for cell in row])


def csv_bytes(header: Sequence[Any] | None, rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    write_csv(buffer, header, rows)
    return buffer.getvalue().encode("utf-8")
