"""Chart data for the job page: the results file when there is one, else the live metrics."""

from __future__ import annotations

import csv
import io
import math
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


def forecast_figure(forecast: dict[str, Any]) -> dict[str, Any]:
    """A plotly figure of a finished scaling forecast (jobs.forecast): the measured points, the
    fitted line (dashed beyond today's size) and the projected point, on a log2 x axis."""
    points = forecast["points"]
    a, b = forecast["intercept"], forecast["slope"]
    n, two_n = forecast["current"]["examples"], forecast["projected"]["examples"]
    first = points[0]["examples"]

    def fit(x: int) -> float:
        return a + b * math.log2(x)

    line = {"type": "scatter", "mode": "lines", "hoverinfo": "skip", "line": {"color": "#2563eb"}}
    data = [
        {**line, "name": "fitted line", "x": [first, n], "y": [fit(first), fit(n)]},
        {
            **line,
            "name": "extended to 2×",
            "x": [n, two_n],
            "y": [fit(n), forecast["projected"]["value"]],
            "line": {"color": "#2563eb", "dash": "dash"},
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "measured",
            "x": [p["examples"] for p in points],
            "y": [p["value"] for p in points],
            "marker": {"size": 10},
            "hovertemplate": "%{x} examples: %{y:.1%}<extra></extra>",
        },
        {
            "type": "scatter",
            "mode": "markers",
            "name": "projected",
            "x": [two_n],
            "y": [forecast["projected"]["value"]],
            "marker": {"size": 14, "symbol": "star"},
            "hovertemplate": "%{x} examples: %{y:.1%} (projected)<extra></extra>",
        },
    ]
    ticks = sorted({*(p["examples"] for p in points), two_n})
    layout = {
        "height": 340,
        "margin": {"t": 36, "r": 10, "b": 80, "l": 56},
        "title": {
            "text": f"{forecast['metric_label'].capitalize()} by data size",
            "font": {"size": 14},
        },
        # Plotly's log axis is base 10, but any base gives the same spacing: ticks at the
        # measured sizes (each double the last) make the log2 scale readable.
        "xaxis": {
            "type": "log",
            "title": {"text": "training examples (log₂ scale)"},
            "tickvals": ticks,
            "ticktext": [str(t) for t in ticks],
        },
        "yaxis": {"title": {"text": forecast["metric_label"]}, "tickformat": ".1%"},
        "legend": {"orientation": "h", "y": -0.35},
    }
    return {"data": data, "layout": layout}
