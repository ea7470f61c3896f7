"""Streaming validation of a JSONL training file: the checks and statistics, without Django.

`analyse_stream` reads a file once, line by line, in constant memory: lines are cut from
fixed-size chunks, an over-long line is skipped without being held whole, and statistics are
kept compact (token-length histograms; a packed array of row hashes for duplicates), never as
per-row lists of objects. Token counts are taken in batches: on this thread when counting is
Python-bound (the default tokenizer's chunk path), else on the token counter's pool threads
while this one parses on (Rust releases the GIL).

Every problem is reported with its 1-based line number; the first `max_errors` are kept and all
are counted. One line gets at most one error: the first thing wrong with it. Chat lines are
checked by `engine.chat_format`, the schema the trainer also uses, and counted as the trainer
renders them; a key written twice in one object is an error (`duplicate_key`), since every JSON
reader here would keep the last one silently.

The worker (`datasets.processing.file_validate`) runs this on uploaded files. Nothing here
imports Django or the models, so a process that only validates starts in a fraction of the
time `django.setup()` takes: `python -m datasets.validation FILE` checks a local file exactly as
an upload would be checked (it reads the settings, never the database).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from common.safejson import MAX_DEPTH, nul_path, too_deep
from engine import chat_format

if TYPE_CHECKING:
    from datasets.tokens import TokenCounter

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
# A line this long can't be a training example for any model we serve (8k tokens is ~32 KB);
# past it, the rest of the line is skipped unread into memory.
DEFAULT_MAX_LINE_BYTES = 4 << 20
BATCH_TEXTS = 4096
MAX_PENDING_BATCHES = 4
KEPT_LINE_NUMBERS = 20  # duplicates / over-long rows: how many line numbers stats keep
MAX_LABELS = 1000  # more distinct completions than this is not classification
HISTOGRAM_BINS = 30
# Up to this many rows, duplicates are found with a set (~70 bytes a row) rather than numpy.
SMALL_FILE_ROWS = 250_000

PROMPT_COMPLETION_KEYS = frozenset({"prompt", "completion"})
# File.Format's values (datasets.processing checks that they agree).
PROMPT_COMPLETION = "prompt_completion"
CHAT = "chat"
PREFERENCE = "preference"  # DPO pairs: input, preferred_output, non_preferred_output

BOM_UTF8 = b"\xef\xbb\xbf"
BINARY_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"PK\x03\x04": "a ZIP archive (an XLSX spreadsheet?)",
    b"\xd0\xcf\x11\xe0": "a legacy Office document (an XLS spreadsheet?)",
    b"\x1f\x8b": "a gzip archive",
    b"%PDF": "a PDF document",
}


json_type = chat_format.json_type
# In a preference row's token layout: a piece of the non-preferred output.
NON_PREFERRED = "non_preferred"


class RowError(Exception):
    """What is wrong with one line; becomes an entry of File.errors."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class FatalFileError(Exception):
    """The whole file is unreadable as JSONL (UTF-16, a spreadsheet): stop at once."""


# --- reading -----------------------------------------------------------------------------------


def iter_lines(
    read: Callable[[int], bytes], *, max_line_bytes: int, first: bytes = b""
) -> Iterator[bytes | None]:
    """Yield each line (without its newline), or None for a line longer than max_line_bytes.

    Reads CHUNK_BYTES at a time; memory stays below max_line_bytes + CHUNK_BYTES whatever the
    file holds. `first` is data already read from the stream (the sniffed head).
    """
    pending = b""  # the start of a line whose end hasn't been read yet
    skipping = False  # inside an over-long line: drop bytes until its newline
    chunk = first or read(CHUNK_BYTES)
    while chunk:
        pieces = chunk.split(b"\n")
        tail = pieces.pop()
        if pieces:
            head = pieces[0]
            if skipping:
                skipping = False
                yield None
            else:
                line = pending + head if pending else head
                yield line if len(line) <= max_line_bytes else None
            pending = b""
            for line in pieces[1:]:
                yield line if len(line) <= max_line_bytes else None
        if not skipping:
            pending = pending + tail if pending else tail
            if len(pending) > max_line_bytes:
                pending, skipping = b"", True
        chunk = read(CHUNK_BYTES)
    if skipping:
        yield None
    elif pending:
        yield pending


def _looks_like_utf16(head: bytes) -> bool:
    """ASCII text in UTF-16 without a BOM: NULs at every odd (LE) or even (BE) offset and
    text bytes between them. A run of NULs is binary, not UTF-16 (it would decode to U+0000s)."""
    sample = head[:64] if len(head) % 2 == 0 else head[: min(len(head) - 1, 64)]
    if len(sample) < 4:
        return False
    evens, odds = sample[0::2], sample[1::2]
    little = not any(odds) and all(evens)
    big = not any(evens) and all(odds)
    return little or big


def sniff(head: bytes) -> None:
    """Refuse, from the first bytes, files that are not UTF-8 text at all."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or _looks_like_utf16(head):
        raise FatalFileError(
            "The file is UTF-16 encoded; JSONL must be UTF-8. Re-save it as UTF-8 and upload it "
            "again."
        )
    for signature, kind in BINARY_SIGNATURES.items():
        if head.startswith(signature):
            raise FatalFileError(
                f"The file is {kind}, not JSONL. Fine-tuning needs a JSONL file: one JSON object "
                "per line. Convert spreadsheets on the upload page or with "
                "`manage.py prepare_data`."
            )
    # UTF-8 JSON never holds a NUL byte (JSON escapes control characters in strings).
    nul = head.find(b"\0")
    if nul != -1:
        raise FatalFileError(
            f"The file is binary, not text: it holds NUL bytes (the first at byte {nul + 1}). "
            "Fine-tuning needs a UTF-8 JSONL file: one JSON object per line."
        )


# --- row checks --------------------------------------------------------------------------------


def check_prompt_completion(row: dict[str, Any]) -> tuple[str, str]:
    if len(row) != 2 or "prompt" not in row or "completion" not in row:
        for key in ("prompt", "completion"):
            if key not in row:
                if "messages" in row:
                    raise RowError(
                        "is a chat example (`messages`), but the file is prompt/completion data",
                        "messages",
                    )
                raise RowError(f"is missing the `{key}` key", key)
        extra = sorted(k for k in row if k not in PROMPT_COMPLETION_KEYS)
        names = ", ".join(f"`{k}`" for k in extra)
        raise RowError(
            f"has unknown key{'s' if len(extra) > 1 else ''} {names}; only `prompt` and "
            "`completion` are allowed",
            extra[0],
        )
    prompt, completion = row["prompt"], row["completion"]
    if type(prompt) is not str:
        raise RowError(f"`prompt` must be a string, got {json_type(prompt)}", "prompt")
    if type(completion) is not str:
        raise RowError(f"`completion` must be a string, got {json_type(completion)}", "completion")
    if not completion:
        raise RowError("has an empty `completion`", "completion")
    return prompt, completion


def check_chat(row: dict[str, Any]) -> chat_format.Conversation:
    """The example as the trainer will see it, or RowError naming the first problem."""
    if "messages" not in row and ("prompt" in row or "completion" in row):
        raise RowError(
            "is a prompt/completion example, but the file is chat data (`messages`)",
            "prompt" if "prompt" in row else "completion",
        )
    try:
        return chat_format.normalise_example(row)
    except chat_format.ChatFormatError as exc:
        raise RowError(exc.error.message, exc.error.param) from None


# --- duplicate keys ------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    row = dict(pairs)
    if len(row) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return row


def duplicate_key(raw: bytes | str, value: Any) -> str | None:
    """A key that appears twice in one object of the line `value` was parsed from, or None.

    JSON parsers keep the last of two equal keys silently. A cheap count finds the lines that
    can't have one: a line's quote bytes are two per string plus one per escaped quote inside
    a string (UTF-8 never holds 0x22 otherwise), and orjson writes `value` back the same way, so
    when the two counts agree no string (no key) was dropped, unless a quote was written as
    \\u0022 (one byte fewer). Only other lines are parsed again with the standard library,
    keeping every key.
    """
    data = raw.encode() if isinstance(raw, str) else raw
    try:
        again = orjson.dumps(value)
    except orjson.JSONEncodeError:  # what only the standard library reads (huge integers)
        again = b""
    if data.count(b'"') == again.count(b'"') and b"\\u0022" not in data:
        return None
    try:
        json.loads(data, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as exc:
        return exc.key
    except (ValueError, RecursionError):
        pass
    return None


def duplicate_key_error(key: str) -> RowError:
    return RowError(
        f"has the key {json.dumps(key, ensure_ascii=False)} twice in one object; JSON readers "
        "keep only the last one, so say it once",
        key,
    )


# --- statistics --------------------------------------------------------------------------------


def length_summary(counts: dict[int, int]) -> dict[str, Any] | None:
    """min/max/mean/percentiles and a fixed-bin histogram from a length -> rows counter."""
    total = sum(counts.values())
    if not total:
        return None
    lengths = sorted(counts)
    lo, hi = lengths[0], lengths[-1]
    mean = sum(n * c for n, c in counts.items()) / total

    def percentile(p: float) -> int:
        rank, seen = math.ceil(p * total), 0
        for n in lengths:
            seen += counts[n]
            if seen >= rank:
                return n
        return hi

    width = max(1, math.ceil((hi - lo + 1) / HISTOGRAM_BINS))
    bins = math.ceil((hi - lo + 1) / width)
    histogram = [0] * bins
    for n, c in counts.items():
        histogram[(n - lo) // width] += c
    return {
        "min": lo,
        "max": hi,
        "mean": round(mean, 2),
        "p50": percentile(0.5),
        "p90": percentile(0.9),
        "p99": percentile(0.99),
        "histogram": {"edges": [lo + i * width for i in range(bins + 1)], "counts": histogram},
    }


@dataclass
class Report:
    """The outcome of one pass over a file; what File.stats/errors/status are written from."""

    format: str = ""
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self) -> str:
        if self.ok:
            tokens = (self.stats.get("tokens") or {}).get("total")
            shown = f", {tokens:,} tokens" if tokens is not None else ""
            return f"{self.stats.get('examples', 0):,} examples{shown}."
        parts = [
            f"line {e['line']}: {e['message']}" if e.get("line") else e["message"]
            for e in self.errors[:3]
        ]
        more = "; ..." if self.error_count > 3 else ""
        head = f"{self.error_count} error{'s' if self.error_count != 1 else ''}; "
        return (head + "; ".join(parts) + more)[:2000]


class _Validator:
    """One pass's state. Row checks run here; token counts come back from the pool."""

    def __init__(
        self, *, counter: TokenCounter | None, context_length: int, max_errors: int
    ) -> None:
        self.counter = counter
        self.context_length = context_length
        self.max_errors = max_errors
        self.report = Report()
        self.format = ""
        self.examples = 0
        # One 64-bit hash and one line number per example, packed (16 bytes a row rather than
        # ~70 in a set); duplicates are found by sorting them once at the end.
        self.hashes = array("q")
        self.hash_lines = array("q")
        self.labels: dict[str, int] | None = {}
        self.empty_prompts = 0
        self.roles: dict[str, int] = {}
        self.preference = dict.fromkeys(("identical_outputs", "with_tools"), 0)
        self.identical_lines: list[int] = []
        self.chat = dict.fromkeys(
            ("assistant_messages", "weight_0", "examples_with_tools", "tool_calls"), 0
        )
        # Token statistics, filled as batches come back.
        self.hist_prompt: dict[int, int] = {}
        self.hist_completion: dict[int, int] = {}
        self.hist_example: dict[int, int] = {}
        self.tokens_prompt = 0
        self.tokens_completion = 0
        self.over_context = 0
        self.over_context_lines: list[int] = []
        # The batch being filled: texts to count, and per row (line, layout).
        self.texts: list[str] = []
        self.rows: list[tuple[int, Any]] = []
        self.pending: deque[tuple[Future[list[int]], list[tuple[int, Any]]]] = deque()

    def error(self, line: int | None, message: str, param: str | None = None) -> None:
        self.report.error_count += 1
        if len(self.report.errors) < self.max_errors:
            self.report.errors.append({"line": line, "message": message, "param": param})

    def add_label(self, label: str) -> None:
        labels = self.labels
        if labels is not None:
            labels[label] = labels.get(label, 0) + 1
            if len(labels) > MAX_LABELS:
                self.labels = None

    def add_duplicate_key(self, key: int, line: int) -> None:
        self.hashes.append(key)
        self.hash_lines.append(line)

    def duplicates(self) -> dict[str, Any]:
        """Rows equal to an earlier row: how many, and the first few line numbers."""
        if not self.hashes:
            return {"count": 0, "lines": []}
        if len(self.hashes) <= SMALL_FILE_ROWS:
            # One pass with a set: cheaper here than importing numpy (a tenth of a second).
            seen: set[int] = set()
            count = 0
            lines: list[int] = []
            for key, line in zip(self.hashes, self.hash_lines, strict=True):
                if key in seen:
                    count += 1
                    if len(lines) < KEPT_LINE_NUMBERS:
                        lines.append(line)
                else:
                    seen.add(key)
            return {"count": count, "lines": lines}
        import numpy as np

        hashes = np.frombuffer(self.hashes, dtype=np.int64)
        order = np.argsort(hashes, kind="stable")  # equal hashes keep file order
        ordered = hashes[order]
        repeat = np.zeros(len(ordered), dtype=bool)
        repeat[1:] = ordered[1:] == ordered[:-1]
        lines = np.frombuffer(self.hash_lines, dtype=np.int64)[order[repeat]]
        return {
            "count": int(repeat.sum()),
            "lines": [int(n) for n in np.sort(lines)[:KEPT_LINE_NUMBERS]],
        }

    # --- lines ---

    def run(self, lines: Iterator[bytes | None], max_line_bytes: int) -> int:
        """Check every line; returns how many there were.

        The loop is the hot path (a million rows must take seconds), so the common case, a
        well-formed prompt/completion row, is handled inline with local names; anything else
        goes through `other_line`, which finds and reports what is wrong.
        """
        loads, JSONDecodeError = orjson.loads, orjson.JSONDecodeError
        add_hash, add_hash_line = self.hashes.append, self.hash_lines.append
        texts, rows = self.texts, self.rows
        number = 0
        for number, raw in enumerate(lines, start=1):
            if raw is None:
                self.error(
                    number,
                    f"is longer than {max_line_bytes:,} bytes; no training example can be "
                    "that long",
                )
                continue
            try:
                row = loads(raw)  # also rejects invalid UTF-8
            except JSONDecodeError as exc:
                self.diagnose(number, raw, exc)
                continue
            if (
                self.format == PROMPT_COMPLETION
                and type(row) is dict
                and len(row) == 2
                and type(prompt := row.get("prompt")) is str
                and type(completion := row.get("completion")) is str
                and completion
                and b"\\u0000" not in raw
                # Two keys and two string values: eight quotes unless a text holds one.
                and (raw.count(b'"') == 8 or duplicate_key(raw, row) is None)
            ):
                self.examples += 1
                add_hash(hash((prompt, completion)))
                add_hash_line(number)
                labels = self.labels
                if labels is not None:
                    labels[completion] = labels.get(completion, 0) + 1
                    if len(labels) > MAX_LABELS:
                        self.labels = None
                if not prompt:
                    self.empty_prompts += 1
                texts.append(prompt)
                texts.append(completion)
                rows.append((number, None))
                if len(texts) >= BATCH_TEXTS:
                    self.flush()
                    texts, rows = self.texts, self.rows
                continue
            self.other_line(number, row, raw)
            texts, rows = self.texts, self.rows
        return number

    def diagnose(self, number: int, raw: bytes, exc: orjson.JSONDecodeError) -> None:
        """Report why orjson refused a line: blank, bad UTF-8, or bad JSON.

        The standard library's message is the friendlier one where it also fails; what only
        orjson refuses (NaN, lone surrogates) is reported in orjson's words.
        """
        if not raw or raw.isspace():
            self.error(number, "is blank; remove blank lines (JSONL has one example per line)")
            return
        if "depth limit" in str(exc):
            # The standard library would recurse once per level: don't ask it.
            self.error(number, f"is nested more than {MAX_DEPTH} levels deep", "file")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            self.error(
                number,
                f"is not valid UTF-8 (byte 0x{raw[bad.start]:02x} at column {bad.start + 1}); "
                "save the file as UTF-8",
            )
            return
        # orjson says "surrogate" for invalid UTF-8 too: only valid UTF-8 gets here.
        if "surrogate" in str(exc):
            self.error(
                number,
                f"holds a lone UTF-16 surrogate escape (\\ud800-\\udfff without its pair) at "
                f"column {exc.colno}, which is not text",
            )
            return
        reason: json.JSONDecodeError = exc
        try:
            json.loads(text)
        except json.JSONDecodeError as stdlib:
            reason = stdlib
        except RecursionError:
            pass  # invalid where orjson stopped, and too deep after it: orjson's words
        self.error(number, f"is not valid JSON at column {reason.colno}: {reason.msg}")

    def other_line(self, number: int, row: Any, raw: bytes) -> None:
        if type(row) is not dict:
            self.error(number, f"must be a JSON object, got {json_type(row)}")
            return
        # orjson allows 1024 levels; the checks below (and the trainer) must not recurse that far.
        if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and too_deep(row):
            self.error(number, f"is nested more than {MAX_DEPTH} levels deep", "file")
            return
        # Text with NUL can't be stored or shown everywhere (PostgreSQL refuses it in jsonb).
        if b"\\u0000" in raw and (path := nul_path(row)) is not None:
            self.error(number, f"holds a NUL character (\\u0000) in `{path}`", path or None)
            return
        key = duplicate_key(raw, row)
        if key is not None:
            error = duplicate_key_error(key)
            self.error(number, error.message, error.param)
            return
        if not self.format:
            if chat_format.is_preference_row(row):
                self.format = PREFERENCE
                self.labels = None  # two outputs a line: no classification labels
            elif "messages" in row:
                self.format = CHAT
            elif "prompt" in row or "completion" in row:
                self.format = PROMPT_COMPLETION
            else:
                keys = ", ".join(f"`{k}`" for k in list(row)[:5]) or "no keys"
                self.error(
                    number,
                    f"has {keys}; expected `prompt` and `completion`, `messages` for chat, or "
                    "`input`, `preferred_output` and `non_preferred_output` for preference "
                    "pairs",
                )
                return
        try:
            if self.format == PROMPT_COMPLETION:
                self.prompt_completion_row(number, row)
            elif self.format == PREFERENCE:
                self.preference_row(number, row, raw)
            else:
                self.chat_row(number, row, raw)
        except RowError as exc:
            self.error(number, exc.message, exc.param)

    def prompt_completion_row(self, number: int, row: dict[str, Any]) -> None:
        prompt, completion = check_prompt_completion(row)
        self.examples += 1
        self.add_duplicate_key(hash((prompt, completion)), number)
        self.add_label(completion)
        if not prompt:
            self.empty_prompts += 1
        self.texts.append(prompt)
        self.texts.append(completion)
        self.rows.append((number, None))
        if len(self.texts) >= BATCH_TEXTS:
            self.flush()

    def chat_row(self, number: int, row: dict[str, Any], raw: bytes) -> None:
        conversation = check_chat(row)
        self.examples += 1
        self.add_duplicate_key(hash(raw.strip()), number)
        roles, chat = self.roles, self.chat
        for message in row["messages"]:
            roles[message["role"]] = roles.get(message["role"], 0) + 1
        reply = ""
        for message, flag in zip(conversation.messages, conversation.trained, strict=True):
            if flag is not None:
                chat["assistant_messages"] += 1
                chat["weight_0"] += not flag
                chat["tool_calls"] += len(message.get("tool_calls", ()))
                reply = message["content"]
        if conversation.tools:
            chat["examples_with_tools"] += 1
        layout = self.chat_layout(conversation)
        self.texts.extend(text for _, text, _ in layout)
        self.add_label(reply)
        self.rows.append((number, [(role, trained) for role, _, trained in layout]))
        if len(self.texts) >= BATCH_TEXTS:
            self.flush()

    def preference_row(self, number: int, row: dict[str, Any], raw: bytes) -> None:
        """A DPO pair: checked by `engine.chat_format` as the trainer reads it; counted as the
        input once plus both outputs (the non-preferred output's pieces are marked NON_PREFERRED
        so that `consume` can tell each sequence's length)."""
        try:
            pair = chat_format.normalise_preference(row)
        except chat_format.ChatFormatError as exc:
            raise RowError(exc.error.message, exc.error.param) from None
        self.examples += 1
        self.add_duplicate_key(hash(raw.strip()), number)
        for message in row["input"]["messages"]:
            self.roles[message["role"]] = self.roles.get(message["role"], 0) + 1
        preferred, non_preferred = pair.output_texts()
        self.preference["with_tools"] += bool(pair.preferred.tools)
        if preferred == non_preferred:
            self.preference["identical_outputs"] += 1
            if len(self.identical_lines) < KEPT_LINE_NUMBERS:
                self.identical_lines.append(number)
        layout: list[tuple[Any, str, bool | str]] = list(self.chat_layout(pair.preferred))
        layout += [
            (role, text, NON_PREFERRED)
            for role, text, trained in self.chat_layout(pair.non_preferred)
            if trained
        ]
        self.texts.extend(text for _, text, _ in layout)
        self.rows.append((number, [(role, trained) for role, _, trained in layout]))
        if len(self.texts) >= BATCH_TEXTS:
            self.flush()

    def chat_layout(self, conversation: chat_format.Conversation) -> list[tuple[Any, str, bool]]:
        """(role, text, trained) pieces whose token counts add up to the example's.

        A plain conversation is counted message by message, plus the template's overhead per
        role (measured once). One with tools is rendered through the template, as the trainer
        renders it, and cut at the assistant turns (role None: no overhead to add).
        """
        if conversation.uses_tools and self.counter is not None:
            renderer = self.counter.chat_renderer
            if renderer is not None:
                try:
                    rendered = chat_format.render_chat(renderer, conversation)
                except chat_format.TemplateError:
                    pass
                else:
                    pieces: list[tuple[Any, str, bool]] = []
                    done = 0
                    for start, end, trained in rendered.spans:
                        pieces.append((None, rendered.text[done:start], False))
                        pieces.append((None, rendered.text[start:end], trained))
                        done = end
                    pieces.append((None, rendered.text[done:], False))
                    return pieces
        messages, _, flags = chat_format.template_inputs(conversation, native=False)
        return [
            (message["role"], message["content"], bool(flag))
            for message, flag in zip(messages, flags, strict=True)
        ]

    # --- token counting pipeline ---

    def flush(self) -> None:
        if not self.rows:
            return
        texts, rows = self.texts, self.rows
        self.texts, self.rows = [], []
        if self.counter is None:
            return
        if self.counter.counts_in_python:
            # No GIL to share: counting on this thread beats handing batches to another.
            future: Future[list[int]] = Future()
            future.set_result(self.counter.count_many(texts, split=False))
        else:
            future = self.counter.pool().submit(self.counter.count_many, texts, split=False)
        self.pending.append((future, rows))
        while len(self.pending) > MAX_PENDING_BATCHES:
            self.consume(*self.pending.popleft())

    def drain(self) -> None:
        self.flush()
        while self.pending:
            self.consume(*self.pending.popleft())

    def consume(self, future: Future[list[int]], rows: list[tuple[int, Any]]) -> None:
        counts = future.result()
        hp, hc, he = self.hist_prompt, self.hist_completion, self.hist_example
        limit = self.context_length
        sum_p = sum_c = 0
        i = 0
        assert self.counter is not None
        # Only chat rows need the template's overheads (measured on first use).
        overhead = self.counter.message_overhead if self.format in (CHAT, PREFERENCE) else {}
        for number, layout in rows:
            if layout is None:
                p, c = counts[i], counts[i + 1]
                i += 2
            else:
                p = c = other = 0
                if layout[0][0] not in ("system", None):
                    p += self.counter.conversation_overhead
                for role, trained in layout:
                    n = counts[i]
                    i += 1
                    if trained is NON_PREFERRED:
                        other += n + overhead.get(role, 0)
                        continue
                    p += overhead.get(role, 0)
                    if trained:
                        c += n
                    else:
                        p += n
                if other:
                    # A pair: the longer of its two sequences must fit the context; both
                    # outputs are completion tokens.
                    total = p + max(c, other)
                    c += other
                    sum_p += p
                    sum_c += c
                    hp[p] = hp.get(p, 0) + 1
                    hc[c] = hc.get(c, 0) + 1
                    he[total] = he.get(total, 0) + 1
                    if total > limit:
                        self.over_context += 1
                        if len(self.over_context_lines) < KEPT_LINE_NUMBERS:
                            self.over_context_lines.append(number)
                    continue
            total = p + c
            sum_p += p
            sum_c += c
            hp[p] = hp.get(p, 0) + 1
            hc[c] = hc.get(c, 0) + 1
            he[total] = he.get(total, 0) + 1
            if total > limit:
                self.over_context += 1
                if len(self.over_context_lines) < KEPT_LINE_NUMBERS:
                    self.over_context_lines.append(number)
        self.tokens_prompt += sum_p
        self.tokens_completion += sum_c

    # --- the end ---

    def finish(self, lines: int) -> Report:
        self.drain()
        report = self.report
        report.format = self.format
        if lines == 0:
            self.error(None, "The file is empty.", "file")
        elif self.examples == 0 and report.error_count == 0:
            self.error(None, "The file has no examples.", "file")
        report.stats = self.stats(lines)
        return report

    def task_type(self) -> str:
        if self.format == CHAT:
            return "chat"
        if self.format == PREFERENCE:
            return "preference"
        if self.examples and self.empty_prompts == self.examples:
            return "open-ended generation"
        if self.labels is not None and len(self.labels) < self.examples / 3:
            return "classification"
        return "conditional generation"

    def stats(self, lines: int) -> dict[str, Any]:
        task = self.task_type()
        labels = None
        if self.labels is not None and self.examples and len(self.labels) < self.examples / 3:
            top = sorted(self.labels.items(), key=lambda kv: -kv[1])[:50]
            labels = dict(top)
        counted = self.counter is not None
        stats: dict[str, Any] = {
            "format": self.format,
            "task_type": task,
            "lines": lines,
            "examples": self.examples,
            "duplicates": self.duplicates(),
            "labels": labels,
            "tokenizer": self.counter.name if self.counter is not None else None,
            "context_length": self.context_length,
            "tokens": (
                {
                    "total": self.tokens_prompt + self.tokens_completion,
                    "prompt": self.tokens_prompt,
                    "completion": self.tokens_completion,
                }
                if counted
                else None
            ),
            "prompt_tokens": length_summary(self.hist_prompt),
            "completion_tokens": length_summary(self.hist_completion),
            "example_tokens": length_summary(self.hist_example),
            "over_context": (
                {"count": self.over_context, "lines": self.over_context_lines} if counted else None
            ),
        }
        if self.format == CHAT:
            stats["roles"] = self.roles
            stats["chat"] = self.chat
        if self.format == PREFERENCE:
            stats["roles"] = self.roles
            stats["preference"] = {
                **self.preference,
                "identical_lines": self.identical_lines,
            }
        return stats


def analyse_stream(
    read: Callable[[int], bytes],
    *,
    counter: TokenCounter | None,
    context_length: int,
    max_errors: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Report:
    """Validate JSONL read through `read(n)` in one streaming pass."""
    validator = _Validator(counter=counter, context_length=context_length, max_errors=max_errors)
    head = read(CHUNK_BYTES)
    try:
        sniff(head)
    except FatalFileError as exc:
        validator.error(1, str(exc), "file")
        validator.report.stats = {"lines": None, "examples": 0}
        return validator.report
    if head.startswith(BOM_UTF8):
        validator.error(
            1,
            "starts with a UTF-8 byte order mark (BOM); save the file as UTF-8 without BOM",
        )
        head = head[len(BOM_UTF8) :]
    try:
        number = validator.run(
            iter_lines(read, max_line_bytes=max_line_bytes, first=head), max_line_bytes
        )
    except BaseException:
        # Don't leave tokenizer batches queued if reading failed half-way.
        for future, _ in validator.pending:
            future.cancel()
        raise
    return validator.finish(number)


def validate_path(
    path: str | Path,
    *,
    counter: TokenCounter | None,
    context_length: int,
    max_errors: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> Report:
    """Validate a local file."""
    with open(path, "rb") as stream:
        return analyse_stream(
            stream.read,
            counter=counter,
            context_length=context_length,
            max_errors=max_errors,
            max_line_bytes=max_line_bytes,
        )


# --- the command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m datasets.validation FILE [--json] [--no-tokens]`; exit code 1 if it has errors.

    Settings (the tokenizer, limits) come from DJANGO_SETTINGS_MODULE, `config.settings` by
    default, read without `django.setup()`: no apps, models or database are loaded. The context
    length is the tokenizer's model's own (a worker asks the model registry instead).
    """
    parser = argparse.ArgumentParser(
        prog="python -m datasets.validation",
        description="Validate a JSONL training file as Tunery validates uploads: line-numbered "
        "errors, token counts with the default base model's tokenizer, statistics.",
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-tokens", action="store_true", help="don't count tokens")
    args = parser.parse_args(argv)

    settings = _settings()
    from datasets import tokens

    started = time.perf_counter()
    counter = None if args.no_tokens else tokens.get_counter()
    loaded = time.perf_counter()
    report = validate_path(
        args.file,
        counter=counter,
        context_length=counter.context_length if counter else tokens.FALLBACK_CONTEXT_LENGTH,
        max_errors=settings.TUNERY_VALIDATION_MAX_ERRORS,
        max_line_bytes=settings.TUNERY_VALIDATION_MAX_LINE_BYTES,
    )
    done = time.perf_counter()
    if args.json:
        out = {
            "ok": report.ok,
            "format": report.format,
            "summary": report.summary(),
            "error_count": report.error_count,
            "errors": report.errors,
            "stats": report.stats,
            "seconds": {
                "tokenizer": round(loaded - started, 3),
                "validation": round(done - loaded, 3),
            },
        }
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(f"{args.file}: {report.summary()}\n")
        for error in report.errors:
            where = f"line {error['line']}" if error.get("line") else "file"
            sys.stdout.write(f"  {where}: {error['message']}\n")
        if report.error_count > len(report.errors):
            sys.stdout.write(f"  ... and {report.error_count - len(report.errors):,} more\n")
    return 0 if report.ok else 1


def _settings() -> Any:
    """Django's settings, configured without `django.setup()` (no apps, models or database).

    The default `config.settings` is loaded from its file rather than imported: importing it
    would first run the `config` package, which loads the Celery app, a tenth of a second this
    process has no use for. Any other DJANGO_SETTINGS_MODULE is imported as usual.
    """
    import importlib
    import importlib.util
    import os

    from django.conf import settings

    if settings.configured:
        return settings
    name = os.environ.get("DJANGO_SETTINGS_MODULE") or "config.settings"
    package = importlib.util.find_spec("config") if name == "config.settings" else None
    if package is not None and package.origin:
        path = Path(package.origin).with_name("settings.py")
        spec = importlib.util.spec_from_file_location("_tunery_settings", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(name)
    settings.configure(**{key: getattr(module, key) for key in dir(module) if key.isupper()})
    return settings


if __name__ == "__main__":
    raise SystemExit(main())
