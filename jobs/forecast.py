"""The data-scaling forecast: would more data of this kind help?

A forecast job trains on all of its training data; two child jobs train on ¼ and ½ of it with the
same hyperparameters and seed (jobs.services.job_create). When the last of the three finishes,
`forecast_record` fits metric = a + b·log2(examples) through the three points by least squares
and projects it to twice the data. The guide's rule of thumb is that each doubling of the data
gives a roughly linear gain; the fit measures that gain for this task.

The math functions at the top are plain Python (no Django) and tested on their own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.db import transaction

from engine.spec import subset_size
from jobs.models import FineTuneJob

# The child runs, as shares of the training data; the parent itself is the 1.0 point.
CHILD_FRACTIONS = (0.25, 0.5)

# Below this projected gain (half a percentage point) we call the curve flat. On a validation
# file of a couple of hundred examples one example is already 0.5 pp, so a smaller gain is within
# the noise of the measurement and not worth collecting more data for.
FLAT_GAIN = 0.005

FLAT_SENTENCE = "The curve is flat: more data of this kind is unlikely to help."


@dataclass
class Point:
    fraction: float
    examples: int
    value: float
    job: str  # public id


def fit_log2(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = a + b·log2(n) through (n, y) points.

    The slope is the expected change of y per doubling of n. Needs two distinct n at least.
    """
    xs = [math.log2(n) for n, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("fit_log2 needs at least two different sizes")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    return mean_y - slope * mean_x, slope


def predict(intercept: float, slope: float, n: float) -> float:
    return intercept + slope * math.log2(n)


def clamp01(value: float) -> float:
    """Accuracies live in [0, 1]; a straight line in log2(n) does not know that."""
    return min(1.0, max(0.0, value))


def sentence(current: float, projected: float) -> str:
    if projected - current < FLAT_GAIN:
        return FLAT_SENTENCE
    return (
        f"Doubling your data is expected to raise accuracy from {current:.1%} to {projected:.1%}."
    )


def forecast_from_points(points: Sequence[Point], *, metric: str, label: str) -> dict[str, Any]:
    """The stored forecast: the measured points, the fit, the projection at twice the largest
    run, and the sentence.

    "current" is the fitted value at today's size rather than the single measured point, so the
    sentence and the chart's line agree; both values are kept (the measured one in `points`).
    """
    intercept, slope = fit_log2([(p.examples, p.value) for p in points])
    n = max(p.examples for p in points)
    current = clamp01(predict(intercept, slope, n))
    projected = clamp01(predict(intercept, slope, 2 * n))
    return {
        "status": "succeeded",
        "metric": metric,
        "metric_label": label,
        "points": [asdict(p) for p in sorted(points, key=lambda p: p.examples)],
        "intercept": intercept,
        "slope": slope,  # per doubling of the data
        "current": {"examples": n, "value": current},
        "projected": {"examples": 2 * n, "value": projected},
        "gain": projected - current,
        "flat": projected - current < FLAT_GAIN,
        "sentence": sentence(current, projected),
    }


# --- jobs -----------------------------------------------------------------------------------


def forecast_metric(job: FineTuneJob) -> tuple[str, str]:
    """(final_metrics key, label): classification accuracy when the job computes it (on the full
    validation set at the end of each epoch), else token accuracy on the whole validation file."""
    if (job.classification or {}).get("compute_classification_metrics"):
        return "classification/accuracy", "classification accuracy"
    return "full_validation_token_accuracy", "validation token accuracy"


def fraction_label(fraction: float) -> str:
    return f"{fraction:.0%}"


def _run_name(run: FineTuneJob) -> str:
    which = "full" if run.parent_job_id is None else fraction_label(run.data_fraction)
    return f"the {which}-data run ({run.public_id})"


def forecast_compute(parent: FineTuneJob, runs: Sequence[FineTuneJob]) -> dict[str, Any]:
    """The forecast of finished `runs` (the parent included): a fit when all three succeeded
    and measured the metric, otherwise a failure that says which run and why."""
    metric, label = forecast_metric(parent)
    n_examples = parent.training_file.example_count
    points: list[Point] = []
    problems: list[str] = []
    for run in sorted(runs, key=lambda r: r.data_fraction):
        if run.status != FineTuneJob.Status.SUCCEEDED:
            reason = (run.error or {}).get("message") or run.status
            problems.append(
                f"{_run_name(run)} was cancelled"
                if run.status == FineTuneJob.Status.CANCELLED
                else f"{_run_name(run)} failed: {reason}"
            )
            continue
        value = (run.final_metrics or {}).get(metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            problems.append(f"{_run_name(run)} recorded no {label}")
            continue
        examples = subset_size(n_examples, run.data_fraction)
        points.append(Point(run.data_fraction, examples, float(value), run.public_id))
    if problems or len({p.examples for p in points}) < 2:
        stopped = [r for r in runs if r.status != FineTuneJob.Status.SUCCEEDED]
        cancelled = bool(stopped) and all(r.status == FineTuneJob.Status.CANCELLED for r in stopped)
        return {
            "status": "cancelled" if cancelled else "failed",
            "metric": metric,
            "metric_label": label,
            "points": [asdict(p) for p in points],
            "message": "No forecast: "
            + ("; ".join(problems) if problems else "the runs have too few examples to compare")
            + ".",
        }
    return forecast_from_points(points, metric=metric, label=label)


def forecast_record(*, job: FineTuneJob) -> dict[str, Any] | None:
    """If `job` belongs to a forecast whose three runs have all finished, compute the forecast
    and store it on the parent. Idempotent; returns None while a run is still unfinished."""
    root = job.parent_job_id or (job.pk if job.scaling_forecast else None)
    if root is None:
        return None
    with transaction.atomic():
        # Two runs finishing at once on two workers both get here; the lock orders them, and
        # the later one sees both finished (each committed its own status before calling).
        parent = (
            FineTuneJob.objects.select_for_update(of=("self",))
            .select_related("training_file")
            .filter(pk=root)
            .first()
        )
        if parent is None:
            return None
        runs = [parent, *parent.children.all()]
        if any(not run.is_finished for run in runs):
            return None
        result = forecast_compute(parent, runs)
        FineTuneJob.objects.filter(pk=parent.pk).update(forecast=result)
    return result


def forecast_page(job: FineTuneJob) -> dict[str, Any]:
    """What the job page shows of a forecast parent: its three runs (status, progress, metric)
    and the caption numbers, formatted. Empty for a job without a forecast."""
    if not job.scaling_forecast:
        return {"forecast_runs": [], "forecast_unfinished": False}
    metric, label = forecast_metric(job)
    runs = [job, *job.children.order_by("-data_fraction")]
    rows = []
    for run in runs:
        value = (run.final_metrics or {}).get(metric)
        rows.append(
            {
                "job": run,
                "share": fraction_label(run.data_fraction),
                "value": f"{value:.1%}" if isinstance(value, int | float) else "–",
            }
        )
    result = job.forecast or {}
    caption = ""
    if result.get("status") == "succeeded":
        measured = result["points"][-1]["value"]
        caption = (
            f"Metric: {label} on the validation file. The line is a least-squares fit of the "
            f"three runs: {100 * result['slope']:+.1f} percentage points per doubling. “From” is "
            f"its value at {result['current']['examples']} examples (measured: {measured:.1%})."
        )
    return {
        "forecast_runs": rows,
        "forecast_metric_label": label,
        "forecast_unfinished": any(not run.is_finished for run in runs[1:]),
        "forecast_caption": caption,
    }
