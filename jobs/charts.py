"""Chart data for the job page: the results file when there is one, else the live metrics."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from engine.metrics import GENERATION_COLUMNS, SELECTION_COLUMN
from jobs.forecast import PowerLaw, leave_one_out, project
from jobs.models import FineTuneJob
from jobs.runner import metric_rows

# Columns that are the x axis or bookkeeping, never a chart of their own.
NOT_PLOTTED = {"step", "elapsed_tokens", "elapsed_examples", "total_steps", SELECTION_COLUMN}
# Series prefixes: training_loss and validation_loss are two series of one "Loss" chart.
SPLITS = (
    ("full_validation_", "full validation"),
    ("training_", "training"),
    ("validation_", "validation"),
)
CLASSIFICATION = "classification/"
# Charts whose values are shares (0..1): percent axes and hovers.
SHARE_WORDS = ("accuracy", "precision", "recall", "auroc", "auprc", "f1", "/f")
# Above this many points a series is a plain line; at or below it each point gets a marker.
MARKERS_UP_TO = 30


def _results_rows(job: FineTuneJob) -> list[dict[str, Any]]:
    assert job.result_file is not None
    with job.result_file.blob.open("rb") as fh:
        text = fh.read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _number(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def is_share(column: str) -> bool:
    return any(word in column for word in SHARE_WORDS)


def metric_label(column: str) -> str:
    """A column as people read it: "classification/f1.0" → "F1", "training_loss" → "Training loss"."""
    if column in GENERATION_COLUMNS:  # the one free-text metric (docs/adr/0018)
        return "ROUGE-L of greedy generations"
    if column.startswith(CLASSIFICATION):
        name = column[len(CLASSIFICATION) :]
        if name.startswith("f") and name[1:].replace(".", "", 1).isdigit():
            beta = float(name[1:])
            return f"F{beta:g}" if beta != 1 else "F1"
        return {"auroc": "AUROC", "auprc": "AUPRC", "weighted_f1_score": "Weighted F1"}.get(
            name, name.replace("_", " ").capitalize()
        )
    return column.replace("_", " ").capitalize()


def _family(column: str) -> tuple[str, str]:
    """(chart, series) for a results column: every metric series goes somewhere."""
    if column.startswith(CLASSIFICATION):
        return "classification", metric_label(column)
    if column in GENERATION_COLUMNS:
        # At epoch ends, like the full validation loss, but on a fixed sample of at most 100
        # validation examples (engine.free_text.MAX_EXAMPLES): decoding costs far more.
        return column, "validation sample"
    for prefix, name in SPLITS:
        if column.startswith(prefix):
            return column[len(prefix) :], name
    return column, column.replace("_", " ")


def chart_data(job: FineTuneJob) -> list[dict[str, Any]]:
    """The job's metric charts, built from whatever columns its results rows have (supervised,
    classification, DPO's preference accuracy and reward margin, anything added later).

    [{id, title, share, kind: "line"|"bar", series: [{name, x: [step…], y: [value…]}]}], loss
    first; empty cells are left out. A chart whose series have a single point each (the
    classification metrics of a 1-epoch run) is a bar per metric: six dots stacked on one step
    say nothing.
    """
    rows = _results_rows(job) if job.result_file_id else metric_rows(job)
    charts: dict[str, dict[str, Any]] = {}
    for row in rows:
        step = _number(row.get("step"))
        if step is None:
            continue
        for column, raw in row.items():
            value = _number(raw)
            if column in NOT_PLOTTED or value is None:
                continue
            family, name = _family(column)
            chart = charts.setdefault(
                family,
                {
                    "id": "chart-" + "".join(c if c.isalnum() else "-" for c in family),
                    "title": "Classification"
                    if family == "classification"
                    else metric_label(family),
                    "share": is_share(family) or family == "classification",
                    "series": {},
                },
            )
            series = chart["series"].setdefault(name, {"name": name, "x": [], "y": []})
            series["x"].append(int(step))
            series["y"].append(value)
    out = []
    for _, chart in sorted(charts.items(), key=lambda kv: kv[0] != "loss"):
        series = list(chart["series"].values())
        single = all(len(s["x"]) == 1 for s in series) and len(series) > 1
        out.append({**chart, "series": series, "kind": "bar" if single else "line"})
    return out


def charts_version(job: FineTuneJob) -> str:
    """Changes whenever chart_data may have: each step writes its metrics row and `step`, and
    the results file replaces them at the end."""
    return f"{job.step}-{job.result_file_id or 0}"


def forecast_figure(forecast: dict[str, Any]) -> dict[str, Any]:
    """A plotly figure of a finished scaling forecast (jobs.forecast): the measured points, the
    fitted learning curve through them, its projection from the measured value to twice the data
    (dashed) inside the leave-one-out band, and the projected point with its range, on a log2 x
    axis. A forecast the points can't support shows the points alone."""
    points = forecast["points"]
    n, two_n = forecast["current"]["examples"], forecast["projected"]["examples"]
    current = forecast["current"]["value"]
    first = points[0]["examples"]
    fit = forecast["fit"]
    curve = PowerLaw(a=fit["a"], b=fit["b"], floor=fit["floor"])
    supported = forecast["verdict"] != "unsupported"

    def grid(lo: float, hi: float, k: int = 24) -> list[float]:
        return [lo * (hi / lo) ** (i / k) for i in range(k + 1)]

    measured = {
        "type": "scatter",
        "mode": "markers",
        "name": "measured",
        "x": [p["examples"] for p in points],
        "y": [p["value"] for p in points],
        "marker": {"size": 10, "color": "#111827"},
        "hovertemplate": "%{x} examples: %{y:.1%}<extra></extra>",
    }
    data: list[dict[str, Any]] = []
    if supported:
        # The band: at each size, the lowest and highest projection of the leave-one-out fits
        # (and the full fit), all started from the measured value.
        fits = [curve, *leave_one_out([(float(p["examples"]), p["value"]) for p in points])]
        ahead = grid(n, two_n, 12)
        low = [min(project(current, f, n, x) for f in fits) for x in ahead]
        high = [max(project(current, f, n, x) for f in fits) for x in ahead]
        behind = grid(first, n)
        line = {"type": "scatter", "mode": "lines", "hoverinfo": "skip"}
        projected = forecast["projected"]
        data = [
            {**line, "name": "range", "x": ahead, "y": low, "line": {"width": 0}},
            {
                **line,
                "name": "range (leave one run out)",
                "x": ahead,
                "y": high,
                "fill": "tonexty",
                "fillcolor": "rgba(37, 99, 235, 0.15)",
                "line": {"width": 0},
                "showlegend": True,
            },
            {
                **line,
                "name": "fitted curve",
                "x": behind,
                "y": [curve.value(x) for x in behind],
                "line": {"color": "#2563eb"},
            },
            {
                **line,
                "name": "projection",
                "x": ahead,
                "y": [project(current, curve, n, x) for x in ahead],
                "line": {"color": "#2563eb", "dash": "dash"},
            },
            {
                "type": "scatter",
                "mode": "markers",
                "name": "projected",
                "x": [two_n],
                "y": [projected["value"]],
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [projected["high"] - projected["value"]],
                    "arrayminus": [projected["value"] - projected["low"]],
                },
                "marker": {"size": 14, "symbol": "star", "color": "#2563eb"},
                "hovertemplate": "%{x} examples: %{y:.1%} (projected)<extra></extra>",
            },
        ]
        data[0]["showlegend"] = False
    data.append(measured)
    ticks = sorted({*(p["examples"] for p in points), *([two_n] if supported else [])})
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
