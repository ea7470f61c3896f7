"""The data-scaling forecast: would more data of this kind help?

A forecast job trains on all of its training data; two child jobs train on ¼ and ½ of it with the
same hyperparameters and seed (jobs.services.job_create). When the last of the three finishes,
`forecast_record` fits a learning curve through the three points and projects it to twice the
data.

The curve is a power law in the error rate, err(n) = a·n^-b, the usual form of learning curves
(Hestness et al. 2017, "Deep learning scaling is predictable, empirically"): it saturates (an
accuracy can't pass 100%, and each doubling removes the same *share* of the remaining errors),
where the straight line in log₂(n) we used before overshot 100%, was clamped, and so called the
steepest curves flat. It is fitted by least squares in log space: log₂ err = log₂ a - b·log₂ n.
A third parameter, an error floor c (err = c + a·n^-b), needs more points than parameters to be
fitted rather than interpolated: with three points we keep two parameters and say so.

What we report:
- `current` is the *measured* value of the full run, never the fit's.
- `projected` applies the fitted rate to the measured error: err(2n) = err_measured(n)·2^-b.
- its range (`low`, `high`) comes from the leave-one-out fits (each pair of the three points
  gives its own rate b); with three points that is the honest measure of how much the fit rests
  on any one run.
- a verdict: "rises" when even the range's low end gains at least FLAT_GAIN; "flat" when even
  its high end gains less; "unclear" in between; "ceiling" at 100%; "unsupported" when three
  points can't carry a curve (more data did clearly worse, or the leave-one-out fits disagree
  wildly). A steep curve is never called flat: the leave-one-out fit through the two largest
  runs keeps the last doubling's gain in the range.

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

# A larger run scoring lower than a smaller one by more than this is not noise around a rising
# curve but a curve we can't fit (or a training problem): no forecast.
DROP_TOLERANCE = FLAT_GAIN

# When the leave-one-out projections spread wider than this (ten points), the three runs
# disagree too much for any projection to mean something.
MAX_SPREAD = 0.10

# Errors are floored here before taking logs: a run at 100% has no finite log error, and a
# validation file never measures finer than this anyway.
MIN_ERROR = 1e-3

FLAT_SENTENCE = "The curve is flat: more data of this kind is unlikely to help."


@dataclass
class Point:
    fraction: float
    examples: int
    value: float
    job: str  # public id


@dataclass(frozen=True)
class PowerLaw:
    """err(n) = floor + a·n^-b."""

    a: float
    b: float
    floor: float = 0.0

    def error(self, n: float) -> float:
        return float(self.floor + self.a * n ** (-self.b))

    def value(self, n: float) -> float:
        return 1.0 - self.error(n)


def _error(value: float) -> float:
    return max(1.0 - value, MIN_ERROR)


def _least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """(intercept, slope, residual sum of squares) of y = intercept + slope·x."""
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("the fit needs at least two different sizes")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    rss = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return intercept, slope, rss


def fit_power_law(points: Sequence[tuple[float, float]], *, floor: float = 0.0) -> PowerLaw:
    """Least squares of log₂(err - floor) = log₂ a - b·log₂ n through (n, value) points, where
    err = 1 - value. Needs two distinct n at least."""
    xs = [math.log2(n) for n, _ in points]
    ys = [math.log2(max(_error(v) - floor, MIN_ERROR)) for _, v in points]
    intercept, slope, _ = _least_squares(xs, ys)
    return PowerLaw(a=2.0**intercept, b=-slope, floor=floor)


def fit_learning_curve(points: Sequence[tuple[float, float]]) -> PowerLaw:
    """The learning curve through the points: two parameters (a, b) up to three points; from
    four points on, also an error floor c, chosen on a grid below the smallest error by the best
    fit in log space (the model then has one residual degree of freedom left)."""
    if len(points) < 4:
        return fit_power_law(points)
    smallest = min(_error(v) for _, v in points)
    best: tuple[float, PowerLaw] | None = None
    for i in range(50):
        c = smallest * i / 50
        xs = [math.log2(n) for n, _ in points]
        ys = [math.log2(max(_error(v) - c, MIN_ERROR)) for _, v in points]
        intercept, slope, rss = _least_squares(xs, ys)
        if best is None or rss < best[0]:
            best = (rss, PowerLaw(a=2.0**intercept, b=-slope, floor=c))
    assert best is not None
    return best[1]


def project(measured_value: float, curve: PowerLaw, n: float, to: float) -> float:
    """The value at `to` examples, from the value measured at `n` and the curve's rate: the
    measured error's reducible part shrinks by (to/n)^-b."""
    reducible = max(_error(measured_value) - curve.floor, 0.0)
    return float(1.0 - (curve.floor + reducible * (to / n) ** (-curve.b)))


def leave_one_out(points: Sequence[tuple[float, float]]) -> list[PowerLaw]:
    """The fits without each point in turn (those with two distinct sizes left)."""
    fits = []
    for i in range(len(points)):
        rest = [p for j, p in enumerate(points) if j != i]
        if len({n for n, _ in rest}) >= 2:
            fits.append(fit_learning_curve(rest))
    return fits


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _drop(points: Sequence[Point]) -> tuple[Point, Point] | None:
    """The first pair where the larger run scored clearly lower than the smaller one."""
    ordered = sorted(points, key=lambda p: p.examples)
    for smaller, larger in zip(ordered, ordered[1:], strict=False):
        if larger.value < smaller.value - DROP_TOLERANCE:
            return smaller, larger
    return None


def forecast_from_points(points: Sequence[Point], *, metric: str, label: str) -> dict[str, Any]:
    """The stored forecast: the measured points, the fitted curve, the projection at twice the
    largest run with its range, the verdict and the sentence."""
    ordered = sorted(points, key=lambda p: p.examples)
    data = [(float(p.examples), p.value) for p in ordered]
    last = ordered[-1]
    n, current = last.examples, last.value
    curve = fit_learning_curve(data)
    projected = project(current, curve, n, 2 * n)
    spread = [project(current, fit, n, 2 * n) for fit in leave_one_out(data)]
    low, high = min([projected, *spread]), max([projected, *spread])
    result: dict[str, Any] = {
        "status": "succeeded",
        "metric": metric,
        "metric_label": label,
        "points": [asdict(p) for p in ordered],
        "fit": {
            "form": "err(n) = a·n^-b" if curve.floor == 0 else "err(n) = c + a·n^-b",
            "a": curve.a,
            "b": curve.b,
            "floor": curve.floor,
            "parameters": 2 if len(data) < 4 else 3,
            "note": (
                "Three points: two parameters (a, b), no error floor."
                if len(data) < 4
                else "An error floor c fitted too."
            ),
            # Each doubling keeps this share of the errors the curve can still remove.
            "error_ratio_per_doubling": 2.0 ** (-curve.b),
        },
        "current": {"examples": n, "value": current},
        "projected": {"examples": 2 * n, "value": projected, "low": low, "high": high},
        "gain": projected - current,
    }
    drop = _drop(ordered)
    if current >= 1.0 - MIN_ERROR:
        verdict = "ceiling"
        text = (
            f"The full run already scores {_pct(current)} {label}: this validation file can't "
            "show any further gain."
        )
    elif drop is not None:
        smaller, larger = drop
        verdict = "unsupported"
        text = (
            f"Three points can't support a forecast here: the run on {larger.examples} examples "
            f"scored lower ({_pct(larger.value)}) than the one on {smaller.examples} "
            f"({_pct(smaller.value)}). Measured now: {_pct(current)} {label}."
        )
    elif high - low > MAX_SPREAD:
        verdict = "unsupported"
        text = (
            "Three points can't support a forecast here: they are too noisy (leaving one out "
            f"moves the projection between {_pct(low)} and {_pct(high)}). Measured now: "
            f"{_pct(current)} {label}."
        )
    elif low - current >= FLAT_GAIN:
        verdict = "rises"
        text = (
            f"The curve still rises: doubling your data is expected to raise {label} from "
            f"{_pct(current)} to {_pct(projected)} (range {_pct(low)}–{_pct(high)})."
        )
    elif high - current < FLAT_GAIN:
        verdict = "flat"
        text = f"{FLAT_SENTENCE} (Measured now: {_pct(current)} {label}.)"
    else:
        verdict = "unclear"
        text = (
            f"The curve may still rise a little: doubling your data is expected to raise {label} "
            f"from {_pct(current)} to {_pct(projected)}, but the range ({_pct(low)}–"
            f"{_pct(high)}) includes no gain worth the data."
        )
    result.update(verdict=verdict, flat=verdict == "flat", sentence=text)
    return result


# --- jobs -----------------------------------------------------------------------------------


def forecast_metric(job: FineTuneJob) -> tuple[str, str]:
    """(final_metrics key, label): classification accuracy when the job computes it (on the full
    validation set at the end of each epoch), else token accuracy on the whole validation file.
    The task metric comes first: token accuracy also scores the tokens every answer shares."""
    if (job.classification or {}).get("compute_classification_metrics"):
        return CLASSIFICATION_METRIC
    return TOKEN_METRIC


CLASSIFICATION_METRIC = ("classification/accuracy", "classification accuracy")
TOKEN_METRIC = ("full_validation_token_accuracy", "validation token accuracy")


def _measured(run: FineTuneJob, metric: str) -> float | None:
    value = (run.final_metrics or {}).get(metric)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def fraction_label(fraction: float) -> str:
    return f"{fraction:.0%}"


def _run_name(run: FineTuneJob) -> str:
    which = "full" if run.parent_job_id is None else fraction_label(run.data_fraction)
    return f"the {which}-data run ({run.public_id})"


def forecast_compute(parent: FineTuneJob, runs: Sequence[FineTuneJob]) -> dict[str, Any]:
    """The forecast of finished `runs` (the parent included): a fit when all three succeeded
    and measured the metric, otherwise a failure that says which run and why."""
    metric, label = forecast_metric(parent)
    succeeded = [r for r in runs if r.status == FineTuneJob.Status.SUCCEEDED]
    if (metric, label) == CLASSIFICATION_METRIC and any(
        _measured(r, metric) is None for r in succeeded
    ):
        # The engine skips classification metrics when the validation data can't support them
        # (it says so in the events); the whole-file token accuracy is still comparable.
        metric, label = TOKEN_METRIC
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
        value = _measured(run, metric)
        if value is None:
            problems.append(f"{_run_name(run)} recorded no {label}")
            continue
        examples = subset_size(n_examples, run.data_fraction)
        points.append(Point(run.data_fraction, examples, value, run.public_id))
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


def forecast_shown(result: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stored forecast in today's shape: one stored before the learning-curve fit (a straight
    line, no verdict) is refitted from its measured points."""
    if not result or result.get("status") != "succeeded" or "verdict" in result:
        return result
    points = [Point(**p) for p in result["points"]]
    return forecast_from_points(points, metric=result["metric"], label=result["metric_label"])


def forecast_page(job: FineTuneJob) -> dict[str, Any]:
    """What the job page shows of a forecast parent: its three runs (status, progress, metric),
    the forecast itself and its caption. Empty for a job without a forecast."""
    if not job.scaling_forecast:
        return {"forecast_runs": [], "forecast_unfinished": False, "forecast": None}
    result = forecast_shown(job.forecast)
    metric, label = forecast_metric(job)
    if result:
        metric, label = result["metric"], result["metric_label"]
    runs = [job, *job.children.order_by("-data_fraction")]
    rows = []
    for run in runs:
        value = _measured(run, metric)
        rows.append(
            {
                "job": run,
                "share": fraction_label(run.data_fraction),
                "value": "–" if value is None else f"{value:.1%}",
            }
        )
    caption = ""
    if result and result.get("status") == "succeeded":
        fit, projected = result["fit"], result["projected"]
        caption = (
            f"Metric: {label} on the validation file. The curve is a power law in the error "
            f"rate, {fit['form']}, fitted in log space to the three runs ({fit['note']}): each "
            f"doubling of the data keeps {fit['error_ratio_per_doubling']:.0%} of the errors. "
            f"“From” is the measured value at {result['current']['examples']} examples; the "
            f"projection applies the fitted rate to it, and the band ({projected['low']:.1%}–"
            f"{projected['high']:.1%}) spans the fits that leave out one run each."
        )
    return {
        "forecast_runs": rows,
        "forecast_metric_label": label,
        "forecast_unfinished": any(not run.is_finished for run in runs[1:]),
        "forecast_caption": caption,
        "forecast": result,
    }
