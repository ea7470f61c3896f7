"""Cursor pagination in OpenAI's shape: `after` an id, `limit`, and an explicit `has_more`.

The current SDK keeps requesting `?after=<last id>` unless `has_more` is false, so every list
that the SDK pages must answer it (reference §9.3).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from common.errors import ServiceError


def parse_limit(raw: str | None, *, default: int, maximum: int = 10_000) -> int:
    if raw in (None, ""):
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise ServiceError("limit must be an integer.", param="limit") from None
    if not 1 <= limit <= maximum:
        raise ServiceError(f"limit must be between 1 and {maximum}.", param="limit")
    return limit


def cursor_page(
    qs: QuerySet[Any], *, after: str | None, limit: int, id_field: str = "public_id"
) -> tuple[list[Any], bool]:
    """Items of `qs` (already in display order) after the one whose id is `after`."""
    items = list(qs.values_list(id_field, flat=True)) if after else None
    if after:
        assert items is not None
        try:
            start = items.index(after) + 1
        except ValueError:
            raise ServiceError(f"No such object: {after}", param="after") from None
        qs = qs[start:]
    page = list(qs[: limit + 1])
    return page[:limit], len(page) > limit
