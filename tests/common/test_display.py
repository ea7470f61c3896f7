"""Template filters that show values honestly (common/templatetags/display.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from common.templatetags.display import ago, article


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("XLSX", "an XLSX"),  # issue #15: the upload page said "A XLSX file"
        ("CSV", "a CSV"),
        ("TSV", "a TSV"),
        ("JSONL", "a JSONL"),
        ("HTML", "an HTML"),
        ("SMS", "an SMS"),
        ("epoch", "an epoch"),
        ("user", "a user"),
        ("hour", "an hour"),
        ("model", "a model"),
        ("", "a "),
    ],
)
def test_article_reads_initialisms_letter_by_letter(word: str, expected: str) -> None:
    assert article(word) == expected


def test_ago_never_says_zero_minutes() -> None:
    now = timezone.now()
    assert ago(now - timedelta(seconds=4)) in ("4 s ago", "5 s ago")
    assert ago(now - timedelta(minutes=3)) == "about 3 min ago"
    assert ago(None) == "–"
