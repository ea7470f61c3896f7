"""The organization's usage page: tokens trained and served, per model, per key and per day,
and the limits that apply with where each stands now. Reads only, scoped to one organization."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from accounts.models import ApiKey, Organization
from jobs.models import FineTuneJob
from models_app.models import UsageRecord
from playground import ratelimit

DAYS = 30


def _since(days: int) -> dt.date:
    return timezone.now().date() - dt.timedelta(days=days - 1)


def served_rows(*, organization: Organization, days: int = DAYS) -> list[dict[str, Any]]:
    """Completions per day, model and key (newest first)."""
    rows = (
        UsageRecord.objects.filter(organization=organization, day__gte=_since(days))
        .values("day", "model_name", "api_key__name", "api_key__prefix")
        .annotate(
            requests=Sum("requests"),
            prompt_tokens=Sum("prompt_tokens"),
            completion_tokens=Sum("completion_tokens"),
        )
        .order_by("-day", "model_name", "api_key__name")
    )
    return [
        {
            "day": r["day"],
            "model": r["model_name"],
            # No key: the playground or the model page, in the browser.
            "key": f"{r['api_key__name']} ({r['api_key__prefix']}…)"
            if r["api_key__name"]
            else "browser",
            "requests": r["requests"] or 0,
            "prompt_tokens": r["prompt_tokens"] or 0,
            "completion_tokens": r["completion_tokens"] or 0,
        }
        for r in rows
    ]


def trained_rows(*, organization: Organization, days: int = DAYS) -> list[dict[str, Any]]:
    """Tokens trained per day (the day a job finished) and base model, by finished jobs."""
    rows = (
        FineTuneJob.objects.filter(
            organization=organization,
            finished_at__date__gte=_since(days),
            trained_tokens__isnull=False,
        )
        .annotate(day=TruncDate("finished_at"))
        .values("day", "base_model__name")
        .annotate(jobs=Count("id"), trained_tokens=Sum("trained_tokens"))
        .order_by("-day", "base_model__name")
    )
    return [
        {
            "day": r["day"],
            "model": r["base_model__name"],
            "jobs": r["jobs"],
            "trained_tokens": r["trained_tokens"] or 0,
        }
        for r in rows
    ]


def totals(served: list[dict[str, Any]], trained: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "requests": sum(r["requests"] for r in served),
        "prompt_tokens": sum(r["prompt_tokens"] for r in served),
        "completion_tokens": sum(r["completion_tokens"] for r in served),
        "trained_tokens": sum(r["trained_tokens"] for r in trained),
        "jobs": sum(r["jobs"] for r in trained),
    }


def by(rows: list[dict[str, Any]], field: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows summed over everything but `field` (per model, per key), largest first."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row[field], {field: row[field], **dict.fromkeys(fields, 0)})
        for f in fields:
            entry[f] += row[f]
    return sorted(out.values(), key=lambda e: -sum(e[f] for f in fields))


def daily_figure(
    served: list[dict[str, Any]], trained: list[dict[str, Any]], *, days: int = DAYS
) -> dict[str, Any]:
    """A plotly figure: tokens trained, prompt tokens and completion tokens per day (stacked)."""
    start = _since(days)
    dates = [start + dt.timedelta(days=i) for i in range(days)]
    sums: dict[str, dict[dt.date, int]] = defaultdict(lambda: defaultdict(int))
    for r in served:
        sums["prompt"][r["day"]] += r["prompt_tokens"]
        sums["completion"][r["day"]] += r["completion_tokens"]
    for r in trained:
        sums["trained"][r["day"]] += r["trained_tokens"]
    x = [d.isoformat() for d in dates]
    traces = [
        ("trained", "tokens trained", "#2b8a3e"),
        ("prompt", "tokens in (served)", "#3a5bd9"),
        ("completion", "tokens out (served)", "#d9480f"),
    ]
    return {
        "data": [
            {
                "type": "bar",
                "name": name,
                "x": x,
                "y": [sums[key][d] for d in dates],
                "marker": {"color": color},
            }
            for key, name, color in traces
        ],
        "layout": {
            "barmode": "stack",
            "height": 320,
            "title": {"text": f"Tokens per day, last {days} days", "font": {"size": 15}},
            "margin": {"t": 70, "r": 10, "b": 40, "l": 56},
            "xaxis": {"type": "date", "automargin": True},
            "yaxis": {"title": {"text": "tokens"}, "automargin": True},
            "legend": {
                "orientation": "h",
                "x": 0.5,
                "xanchor": "center",
                "y": 1.02,
                "yanchor": "bottom",
            },
        },
    }


def limits(*, organization: Organization) -> list[dict[str, Any]]:
    """Each limit, its value and where the organization stands now."""
    running = FineTuneJob.objects.filter(
        organization=organization, status=FineTuneJob.Status.RUNNING
    ).count()
    rate = settings.TUNERY_RATE_LIMIT_PER_MINUTE
    return [
        {
            "name": "Fine-tunes training at once",
            "limit": settings.TUNERY_MAX_RUNNING_JOBS_PER_ORG,
            "now": f"{running} running",
            "note": "More wait in the queue, in order.",
        },
        {
            "name": "API requests per key per minute",
            "limit": rate or "none",
            "now": "see the keys below",
            "note": "Beyond it /v1 answers 429 with Retry-After until the minute ends.",
        },
        {
            "name": "Upload size",
            "limit": f"{settings.MAX_UPLOAD_BYTES // 2**20} MiB",
            "now": "",
            "note": "Per file, checked while the upload streams in.",
        },
        {
            "name": "Tokens per completion",
            "limit": settings.TUNERY_INFERENCE_MAX_TOKENS,
            "now": "",
            "note": "max_tokens above it is refused (400).",
        },
    ]


def key_rates(*, organization: Organization) -> list[dict[str, Any]]:
    """Each live key's requests in the current rate-limit minute."""
    limit = settings.TUNERY_RATE_LIMIT_PER_MINUTE
    out = []
    for key in ApiKey.objects.filter(organization=organization, revoked_at=None).order_by("name"):
        used = ratelimit.current(ratelimit.key_bucket(key.hashed_secret))
        out.append(
            {
                "name": key.name,
                "prefix": key.prefix,
                "used": used,
                "limit": limit,
                "throttled": bool(limit) and used >= limit,
            }
        )
    return out


CSV_HEADER = [
    "day",
    "kind",
    "model",
    "key",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "jobs",
    "trained_tokens",
]


def csv_rows(served: list[dict[str, Any]], trained: list[dict[str, Any]]) -> Iterator[list[Any]]:
    for r in trained:
        yield [
            r["day"].isoformat(),
            "trained",
            r["model"],
            "",
            "",
            "",
            "",
            r["jobs"],
            r["trained_tokens"],
        ]
    for r in served:
        yield [
            r["day"].isoformat(),
            "served",
            r["model"],
            r["key"],
            r["requests"],
            r["prompt_tokens"],
            r["completion_tokens"],
            "",
            "",
        ]
