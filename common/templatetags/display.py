"""Template filters for showing values honestly: `eta`, `shown` (whitespace made visible) and
`counted` (a grammatical count), `article` ("a CSV file", "an XLSX file")."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils import timezone

register = template.Library()


def duration_text(seconds: float) -> str:
    """ "about 50 s", "about 3 min", "about 1 h 20 min": never "0 minutes" for 50 seconds."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"about {max(seconds, 1)} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"


@register.filter
def eta(value: datetime | None) -> str:
    if value is None:
        return "–"
    return duration_text((value - timezone.now()).total_seconds())


@register.filter
def seconds(value: float | None) -> str:
    return "–" if value is None else duration_text(value)


@register.filter
def shown(value: Any) -> str:
    """Strings in quotes, so that a leading space or a newline can be seen: " spam"."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return "auto" if value is None else str(value)


@register.filter
def counted(count: int, noun: str) -> str:
    """`{{ n|counted:"line,lines" }}` → "1 line", "3 lines"."""
    one, _, many = noun.partition(",")
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


# Initialisms are read letter by letter: those whose first letter's name starts with a vowel
# sound take "an" (an F…, an H…, an L…, an M…, an N…, an R…, an S…, an X…, an A/E/I/O…).
AN_LETTERS = set("AEFHILMNORSX")
# Words that start with a vowel letter but a consonant sound, and the reverse.
A_WORDS = ("uni", "use", "usu", "one", "eu")
AN_WORDS = ("hour", "honest", "honour", "heir")


def indefinite_article(word: str) -> str:
    """ "a" or "an" for the word as it is read aloud."""
    if not word:
        return "a"
    head = word.split()[0].strip("\"'“(")
    if len(head) == 1 or head.isupper():
        return "an" if head[0].upper() in AN_LETTERS else "a"
    lower = head.lower()
    if lower.startswith(AN_WORDS):
        return "an"
    if lower.startswith(A_WORDS):
        return "a"
    return "an" if lower[0] in "aeiou" else "a"


@register.filter
def article(word: str) -> str:
    """`{{ kind|article }}` → "a CSV", "an XLSX", "an epoch", "a user"."""
    return f"{indefinite_article(str(word))} {word}"


@register.filter
def ago(value: datetime | None) -> str:
    """ "12 s ago", "about 3 min ago": never "0 minutes ago" for a heartbeat seconds old."""
    if value is None:
        return "–"
    seconds = max(0, round((timezone.now() - value).total_seconds()))
    if seconds < 60:
        return f"{seconds} s ago"
    return duration_text(seconds) + " ago"
