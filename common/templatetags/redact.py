"""`{{ text|redact }}`: a server path in text shown to org members becomes `<data>/...`."""

from __future__ import annotations

from django import template

from common.redact import redact as redact_text

register = template.Library()


@register.filter
def redact(value: object) -> str:
    return redact_text(str(value))
