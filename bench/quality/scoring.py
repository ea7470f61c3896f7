"""The suite's metrics, on (expected, generated) text pairs, tested on their own (ROUGE-L is the
engine's: it also ranks the checkpoints of free-text jobs)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from engine import free_text


def _clean(text: str) -> str:
    return text.strip().split("\n")[0].strip()


def accuracy(pairs: Sequence[tuple[str, str]]) -> float:
    return sum(_clean(e) == _clean(g) for e, g in pairs) / len(pairs) if pairs else 0.0


def macro_f1(pairs: Sequence[tuple[str, str]]) -> float:
    """Mean F1 over the expected classes (a generation that is no class counts as wrong)."""
    classes = sorted({_clean(e) for e, _ in pairs})
    scores = []
    for c in classes:
        tp = sum(_clean(e) == c and _clean(g) == c for e, g in pairs)
        fp = sum(_clean(e) != c and _clean(g) == c for e, g in pairs)
        fn = sum(_clean(e) == c and _clean(g) != c for e, g in pairs)
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def _fields(obj: Any) -> set[tuple[str, str]]:
    if not isinstance(obj, dict):
        return set()
    out = set()
    for key, value in obj.items():
        for item in value if isinstance(value, list) else [value]:
            out.add((str(key), json.dumps(item)))
    return out


def json_scores(pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    """valid_json: the share that parses; field_f1: micro F1 of (key, value) pairs, list items
    one by one; exact_match: the share equal to the expected object."""
    valid = tp = fp = fn = exact = 0
    for expected, generated in pairs:
        want = json.loads(expected)
        try:
            got = json.loads(_clean(generated))
            valid += 1
        except ValueError:
            got = None
        a, b = _fields(want), _fields(got)
        tp, fp, fn = tp + len(a & b), fp + len(b - a), fn + len(a - b)
        exact += got == want
    n = len(pairs) or 1
    return {
        "valid_json": valid / n,
        "field_f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "exact_match": exact / n,
    }


def rouge_l(pairs: Sequence[tuple[str, str]]) -> float:
    """Mean ROUGE-L F1 of the first lines (longest common subsequence of lower-cased words): the
    engine's own measure, which ranks the checkpoints of free-text jobs."""
    total = sum(free_text.rouge_l(_clean(e), _clean(g)) for e, g in pairs)
    return total / len(pairs) if pairs else 0.0


def score(kind: str, pairs: Sequence[tuple[str, str]]) -> dict[str, float]:
    if kind == "classification":
        return {"accuracy": accuracy(pairs), "macro_f1": macro_f1(pairs)}
    if kind == "extraction":
        return json_scores(pairs)
    if kind == "generation":
        return {"rouge_l": rouge_l(pairs)}
    return {"exact_match": accuracy(pairs)}
