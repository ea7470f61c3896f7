"""Strip server paths from text that leaves the server: events, job errors, API errors, pages.

An exception's text often holds an absolute path (`[Errno 13] Permission denied:
'/srv/tunery/var/wandb/...'`, `Could not load the model in /home/ops/...`). API clients and org
members must never see where the server keeps things (security.md, "Access 4"). Every place
that turns an exception into user-visible text passes it through `redact`, and the /v1 error
envelope (`config.api.error_body`) does too, as a last line.

Known roots are replaced by a label and the rest of the path is kept, so a message stays
useful: `/srv/tunery/var/models/3/ftjob-x` becomes `<data>/models/3/ftjob-x`.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path


def _roots() -> list[tuple[str, str]]:
    """(absolute root, label), longest first so the most specific root wins."""
    from django.conf import settings

    found: list[tuple[str, str]] = []

    def add(path: object, label: str) -> None:
        if not path:
            return
        text = os.path.normpath(str(path))
        if len(text) > 1 and text.startswith("/"):
            found.append((text, label))
            real = os.path.realpath(text)
            if real != text:
                found.append((real, label))

    data_dir = os.path.normpath(str(getattr(settings, "DATA_DIR", "") or "")) or None
    add(data_dir, "<data>")
    for name, label in (
        ("MEDIA_ROOT", "<media>"),
        ("FILE_UPLOAD_TEMP_DIR", "<uploads>"),
        ("TUNERY_MODEL_CACHE_DIR", "<model-cache>"),
        ("TUNERY_WANDB_DIR", "<wandb>"),
    ):
        path = getattr(settings, name, None)
        # Under DATA_DIR, the DATA_DIR label keeps the part that says which folder it is.
        if path and not (data_dir and str(path).startswith(data_dir + "/")):
            add(path, label)
    add(getattr(settings, "BASE_DIR", None), "<app>")
    for prefix in {sys.prefix, sys.exec_prefix, sys.base_prefix}:
        add(prefix, "<python>")
    add(Path.home(), "<home>")
    for tmp in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        add(tmp, "<tmp>")
    return sorted(set(found), key=lambda item: -len(item[0]))


def redact(text: str) -> str:
    """`text` with every absolute path under a known server root replaced by its label."""
    if "/" not in text:
        return text
    for root, label in _roots():
        if root in text:
            # Only whole path components: /tmp must not match /tmpfoo.
            # Whole components only (/tmp is not /tmpfoo), and not inside a URL (host/tmp/x).
            text = re.sub(r"(?<![\w./:-])" + re.escape(root) + r"(?![\w.-])", label, text)
    return text
