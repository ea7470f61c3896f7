"""The quality suite's tasks, built from data Python itself ships (no download, no hub).

Five tasks, each a fixed held-out test split (`test.jsonl`), a fixed validation split for
early stopping (`valid.jsonl`) and nested training sets of about 100, 500 and 2,000 examples
(`train_100.jsonl` ⊂ `train_500.jsonl` ⊂ `train_2000.jsonl`; a task whose source has fewer
examples caps the largest and says so in `manifest.json`):

| task | kind | source | input → output | metric |
| --- | --- | --- | --- | --- |
| unicode_category | classification, 7 classes | `unicodedata` (the Unicode Character Database) | a character's name → its general category, in words | accuracy, macro F1 |
| stdlib_module | classification, 10 classes | docstrings of the standard library | a docstring's first paragraph → the module | accuracy, macro F1 |
| letter_fields | extraction, JSON | `unicodedata` letter names | "LATIN SMALL LETTER E WITH ACUTE" → {"script", "case", "letter", "marks"} | valid JSON, field F1, exact match |
| docstring_summary | free-text generation | docstrings of the standard library | `module.name(signature)` → its docstring's first line | ROUGE-L F1 |
| codepoint_chat | chat | `unicodedata` | "What is the name of U+00E9?" → "LATIN SMALL LETTER E WITH ACUTE" | exact match |

Licences: the Unicode Character Database is under the Unicode License v3
(https://www.unicode.org/license.txt), shipped inside CPython's `unicodedata`; CPython's
docstrings are under the PSF License Version 2 (https://docs.python.org/3/license.html). Both
allow redistribution and derived works with the notice kept; `manifest.json` records them and
the Python and Unicode versions the data came from (a different Python builds slightly
different sets).

    .venv/bin/python bench/quality/tasks.py [--out bench/quality/data]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIZES = (100, 500, 2000)
TEST, VALID = 200, 100
SEED = 20261204

LICENCES = {
    "unicodedata": {
        "source": "Unicode Character Database, as shipped in CPython's unicodedata module",
        "licence": "Unicode License v3",
        "url": "https://www.unicode.org/license.txt",
    },
    "stdlib": {
        "source": "docstrings of the CPython standard library",
        "licence": "PSF License Version 2",
        "url": "https://docs.python.org/3/license.html",
    },
}

CATEGORY_WORDS = {
    "Lu": "uppercase letter",
    "Ll": "lowercase letter",
    "Nd": "decimal digit",
    "Sm": "math symbol",
    "Po": "punctuation",
    "So": "other symbol",
    "Mn": "combining mark",
}
MODULES = [
    "ssl",
    "os",
    "socket",
    "ast",
    "decimal",
    "logging",
    "typing",
    "inspect",
    "tarfile",
    "datetime",
]


def _named_chars() -> list[tuple[int, str]]:
    found = []
    for code in range(0x110000):
        name = unicodedata.name(chr(code), None)
        if name:
            found.append((code, name))
    return found


def unicode_category() -> list[dict[str, Any]]:
    """Balanced: as many of each category as the smallest one has."""
    by_class: dict[str, list[str]] = {c: [] for c in CATEGORY_WORDS}
    for code, name in _named_chars():
        cat = unicodedata.category(chr(code))
        if cat in by_class:
            by_class[cat].append(name)
    rng = random.Random(SEED)
    per_class = min(len(v) for v in by_class.values())
    rows = []
    for cat, names in by_class.items():
        for name in rng.sample(names, per_class):
            rows.append(
                {
                    "prompt": f"Character name: {name}\nCategory:",
                    "completion": " " + CATEGORY_WORDS[cat],
                }
            )
    return rows


def _docstrings() -> list[tuple[str, str, str, str]]:
    """(module, qualified name, signature, docstring) of documented public objects."""
    out = []
    for module_name in sorted({*MODULES, *EXTRA_MODULES}):
        module = importlib.import_module(module_name)
        for name, obj in inspect.getmembers(module):
            if name.startswith("_"):
                continue
            owner = getattr(obj, "__module__", None)
            if owner != module_name and not inspect.isbuiltin(obj):
                continue
            members = [(name, obj)]
            if inspect.isclass(obj):
                members += [
                    (f"{name}.{m}", v)
                    for m, v in vars(obj).items()
                    if not m.startswith("_") and callable(v)
                ]
            for qualname, member in members:
                doc = inspect.getdoc(member)
                if not doc or len(doc) < 20:
                    continue
                try:
                    signature = str(inspect.signature(member))
                except (TypeError, ValueError):
                    signature = "(...)"
                out.append((module_name, qualname, signature, doc))
    return out


EXTRA_MODULES = [
    "re",
    "json",
    "collections",
    "pathlib",
    "shutil",
    "subprocess",
    "threading",
    "asyncio",
    "email.message",
    "http.client",
    "urllib.parse",
    "sqlite3",
    "fractions",
    "textwrap",
    "csv",
    "argparse",
    "zipfile",
    "hashlib",
    "struct",
    "calendar",
    "heapq",
    "functools",
    "operator",
    "pickle",
    "enum",
    "contextlib",
    "tempfile",
    "statistics",
    "random",
    "math",
    "string",
    "time",
]


def stdlib_module() -> list[dict[str, Any]]:
    rows = []
    seen = set()
    for module, qualname, _, doc in _docstrings():
        if module not in MODULES:
            continue
        text = doc.split("\n\n")[0].replace("\n", " ")
        # The object's own name would give the module away too easily (ssl.SSLSocket…).
        text = re.sub(re.escape(qualname.split(".")[-1]), "…", text)[:300]
        if text in seen:
            continue
        seen.add(text)
        rows.append({"prompt": f"Docstring: {text}\nModule:", "completion": f" {module}"})
    return rows


LETTER = re.compile(
    r"^([A-Z][A-Z-]*(?: [A-Z][A-Z-]*)*?) (CAPITAL|SMALL) LETTER ([A-Z]+)(?: WITH (.+))?$"
)


def letter_fields() -> list[dict[str, Any]]:
    rows = []
    for _, name in _named_chars():
        match = LETTER.match(name)
        if not match:
            continue
        script, case, letter, marks = match.groups()
        fields = {
            "script": script,
            "case": case.lower(),
            "letter": letter,
            "marks": re.split(r" AND ", marks) if marks else [],
        }
        rows.append(
            {
                "prompt": f"Extract script, case, letter and marks as JSON.\nName: {name}\nJSON:",
                "completion": " " + json.dumps(fields),
            }
        )
    return rows


def docstring_summary() -> list[dict[str, Any]]:
    rows = []
    seen = set()
    for module, qualname, signature, doc in _docstrings():
        first = doc.strip().split("\n")[0].strip()
        key = f"{module}.{qualname}"
        if key in seen or len(first) < 15:
            continue
        seen.add(key)
        rows.append(
            {"prompt": f"Summarise {key}{signature[:120]} in one line:\n", "completion": first}
        )
    return rows


def codepoint_chat() -> list[dict[str, Any]]:
    rows = []
    for code, name in _named_chars():
        if code > 0xFFFF or unicodedata.category(chr(code)) in ("Lo",):
            continue  # the BMP's non-ideographic characters: names worth learning
        rows.append(
            {
                "messages": [
                    {
                        "role": "system",
                        "content": "You answer with the Unicode character name only.",
                    },
                    {"role": "user", "content": f"What is the name of U+{code:04X}?"},
                    {"role": "assistant", "content": name},
                ]
            }
        )
    return rows


TASKS: dict[str, tuple[str, str, Callable[[], list[dict[str, Any]]], list[str]]] = {
    # name: (kind, metric, builder, licences)
    "unicode_category": ("classification", "accuracy", unicode_category, ["unicodedata"]),
    "stdlib_module": ("classification", "accuracy", stdlib_module, ["stdlib"]),
    "letter_fields": ("extraction", "field_f1", letter_fields, ["unicodedata"]),
    "docstring_summary": ("generation", "rouge_l", docstring_summary, ["stdlib"]),
    "codepoint_chat": ("chat", "exact_match", codepoint_chat, ["unicodedata"]),
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build(out: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "python": sys.version.split()[0],
        "unicode": unicodedata.unidata_version,
        "seed": SEED,
        "tasks": {},
    }
    for name, (kind, metric, builder, licences) in TASKS.items():
        rows = builder()
        random.Random(f"{SEED}-{name}").shuffle(rows)
        test, valid, pool = rows[:TEST], rows[TEST : TEST + VALID], rows[TEST + VALID :]
        directory = out / name
        directory.mkdir(parents=True, exist_ok=True)
        write_jsonl(directory / "test.jsonl", test)
        write_jsonl(directory / "valid.jsonl", valid)
        sizes = {}
        for size in SIZES:
            subset = pool[:size]
            write_jsonl(directory / f"train_{size}.jsonl", subset)
            sizes[str(size)] = len(subset)
        manifest["tasks"][name] = {
            "kind": kind,
            "metric": metric,
            "available": len(rows),
            "test": len(test),
            "valid": len(valid),
            "train": sizes,  # a size above `available - test - valid` is capped
            "licences": [LICENCES[k] for k in licences],
        }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "data")
    args = parser.parse_args()
    manifest = build(args.out)
    for name, task in manifest["tasks"].items():
        print(f"{name}: {task['kind']}, {task['available']} available, train {task['train']}")


if __name__ == "__main__":
    main()
