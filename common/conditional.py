"""Cheap conditional GETs for polled endpoints (a job's events, the job page's live partial).

A poller that already has the current state sends `If-None-Match` and gets a bodiless 304: the
view computes a version from a couple of indexed aggregates instead of serializing or rendering
anything. The version must cover everything the response shows; each caller says what that is.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.utils.http import parse_etags

# Browsers store the response but ask again every time (the HTMX partial then comes from their
# cache on a 304); proxies must not share it between users.
CACHE_CONTROL = "private, no-cache"


def etag_of(*parts: Any) -> str:
    return '"' + hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest() + '"'


def is_fresh(request: HttpRequest, etag: str) -> bool:
    header = request.META.get("HTTP_IF_NONE_MATCH")
    if not header:
        return False
    tags = parse_etags(header)
    return "*" in tags or etag in tags or etag.removeprefix("W/") in tags


def tag(response: HttpResponseBase, etag: str) -> HttpResponseBase:
    response["ETag"] = etag
    response["Cache-Control"] = CACHE_CONTROL
    return response
