"""The class labels of classification files, from the counts validation records in File.stats."""

from __future__ import annotations

from datasets.models import File

# datasets.validation keeps the 50 most frequent completions: at 50, some may be missing.
KEPT_LABELS = 50


def known_labels(*files: File | None) -> dict[str, int] | None:
    """The completions (class labels) of the files, with counts; None when any file's labels
    are unknown (not classification data, or more than the 50 validation keeps)."""
    merged: dict[str, int] = {}
    for file in files:
        if file is None:
            continue
        labels = (file.stats or {}).get("labels")
        if not isinstance(labels, dict) or not labels or len(labels) >= KEPT_LABELS:
            return None
        for label, count in labels.items():
            merged[label] = merged.get(label, 0) + int(count)
    return merged or None
