"""JSON from untrusted bytes, bounded: one parser for request bodies and dataset lines.

Python's own `json` recurses once per nesting level, so `'[' * 100000` raises RecursionError
(a 500 wherever it isn't caught), and it accepts lone surrogates (`"\\ud800"`), which later fail
to encode anywhere text leaves the process (a response, PostgreSQL, a CSV export). orjson
bounds nesting (1024) and refuses lone surrogates while parsing; on top of it this module
bounds nesting to MAX_DEPTH, which no request body or training example gets near, so nothing
downstream (json.dumps, a recursive walk, a template) can hit the recursion limit either.

Nothing here imports Django: the validation worker's reader uses it too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

# A chat example with tools and a JSON-schema `parameters` object is about 10 levels deep.
MAX_DEPTH = 64


class JsonProblem(ValueError):
    """Why some bytes are not acceptable JSON; `param` is the path of the offending value,
    when there is one (`messages[0].content`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests containers more than `limit` levels deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))
    return False


def _has_lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def printable(text: str) -> str:
    """`text` with lone surrogates and NULs written as escapes: safe to encode, store and show."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\u0000")


def string_path(value: Any, bad: Callable[[str], bool]) -> str | None:
    """The path of the first string (or key) for which `bad` holds, "" for the root."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if bad(item):
                return path
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                shown = printable(str(key))
                child_path = f"{path}.{shown}" if path else shown
                if bad(str(key)):
                    return child_path
                stack.append((child, child_path))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]") for i, child in reversed(list(enumerate(item))))
    return None


def surrogate_path(value: Any) -> str | None:
    """The path of the first string (or key) holding a lone surrogate, "" for the root."""
    return string_path(value, _has_lone_surrogate)


def nul_path(value: Any) -> str | None:
    """The path of the first string (or key) holding a NUL character, "" for the root."""
    return string_path(value, lambda text: "\x00" in text)


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON text, or raise JsonProblem saying what is wrong (and where, if it can).

    Refuses nesting deeper than `max_depth`, lone surrogates, NUL characters, NaN/Infinity
    and invalid UTF-8.
    Never raises anything else.
    """
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _explain(data, exc) from None
    if too_deep(value, max_depth):
        raise JsonProblem(f"The JSON is nested more than {max_depth} levels deep.")
    # JSON can only carry NUL as an escape; no text field may hold one (PostgreSQL refuses it).
    if (b"\\u0000" in data) if isinstance(data, bytes) else ("\\u0000" in data):
        path = nul_path(value)
        if path is not None:
            where = f" in `{path}`" if path else ""
            raise JsonProblem(f"The JSON holds a NUL character (\\u0000){where}.", path or None)
    return value


def _is_utf8(data: bytes | str) -> bool:
    if isinstance(data, str):
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _explain(data: bytes | str, exc: orjson.JSONDecodeError) -> JsonProblem:
    reason = str(exc)
    if "depth limit" in reason or "recursion" in reason:
        return JsonProblem(f"The JSON is nested more than {MAX_DEPTH} levels deep.")
    if "surrogate" in reason and _is_utf8(data):  # orjson says "surrogates" of bad UTF-8 too
        # Find which value holds it, to name it: the standard library parses lone surrogates.
        # Its recursion is safe here: orjson got this far, so the part read is < 1024 deep,
        # and a RecursionError in the part after it is caught.
        try:
            path = surrogate_path(json.loads(data))
        except (ValueError, RecursionError):
            path = None
        where = f" in `{path}`" if path else ""
        return JsonProblem(
            f"The JSON holds a lone UTF-16 surrogate{where} (an unpaired \\ud800-\\udfff "
            "escape), which is not valid Unicode text.",
            path or None,
        )
    if not _is_utf8(data):
        return JsonProblem("The body is not valid UTF-8 text.")
    return JsonProblem(f"The JSON is not valid: {reason}.")
