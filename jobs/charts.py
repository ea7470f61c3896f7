"""Chart data for the job page: the results file when there is one, else the live metrics."""

from __future__ import annotations

import csv
import io
from typing import Any

from jobs.models import FineTuneJob
from jobs.runner import metric_rows

# Which results columns go on which chart (reference §4.1 names).
CHARTS: list[tuple[str, list[str]]] = [
    ("Loss", ["training_loss", "validation_loss"]),
    ("Token accuracy", ["training_token_accuracy", "validation_token_accuracy"]),
    ("Sequence accuracy", ["training_sequence_accuracy", "validation_sequence_accuracy"]),
]


def _results_rows(job: FineTuneJob) -> list[dict[str, Any]]:
    assert job.result_file is not None
    with job.result_file.blob.open("rb") as fh:
        text = fh.read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def chart_data(job: FineTuneJob) -> list[dict[str, Any]]:
    """[{title, series: [{name, x: [step…], y: [value…]}]}] with empty cells left out."""
    rows = _results_rows(job) if job.result_file_id else metric_rows(job)
    classification = sorted({k for r in rows for k in r if k.startswith("classification/")})
    charts = [*CHARTS, ("Classification", classification)] if classification else CHARTS
    out = []
    for title, columns in charts:
        series = []
        for column in columns:
            points = [
                (int(float(r["step"])), float(r[column]))
                for r in rows
                if r.get(column) not in (None, "")
            ]
            if points:
                series.append(
                    {"name": column, "x": [p[0] for p in points], "y": [p[1] for p in points]}
                )
        if series:
            out.append({"title": title, "series": series})
    return out
