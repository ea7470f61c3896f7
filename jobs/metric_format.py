"""Final metrics as people read them: one row per metric, each formatted for what it measures,
and a warning when a classifier's numbers mean it learned to answer one class only."""

from __future__ import annotations

from typing import Any

from jobs.charts import CLASSIFICATION, is_share, metric_label

COUNTS = ("step", "elapsed_tokens", "elapsed_examples", "best_checkpoint_step")


def format_metric(key: str, value: float) -> str:
    if key in COUNTS:
        return f"{round(value):,}"
    if is_share(key):
        return f"{value:.1%}"
    return f"{value:.4f}"


def metrics_table(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """[{key, label, value}] in a stable order: counts, loss and accuracies, classification."""
    numbers = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "total_steps"
    }

    def order(key: str) -> tuple[int, str]:
        rank = 0 if key in COUNTS else 2 if key.startswith(CLASSIFICATION) else 1
        return rank, key

    return [
        {"key": k, "label": metric_label(k), "value": format_metric(k, numbers[k])}
        for k in sorted(numbers, key=order)
    ]


def classifier_warning(metrics: dict[str, Any]) -> str | None:
    """A sentence when a binary classifier predicted a single class on the validation set.

    Precision and recall 0 with a non-zero accuracy: it never predicted the positive class.
    Recall 1 with precision equal to accuracy: it always did. Either way its accuracy is only
    the share of the majority class."""
    accuracy = metrics.get(f"{CLASSIFICATION}accuracy")
    precision = metrics.get(f"{CLASSIFICATION}precision")
    recall = metrics.get(f"{CLASSIFICATION}recall")
    if not all(isinstance(v, int | float) for v in (accuracy, precision, recall)):
        return None
    assert isinstance(accuracy, int | float) and isinstance(precision, int | float)
    if precision == 0 and recall == 0 and accuracy > 0:
        which = "the negative class only: it never predicted the positive class"
    elif recall == 1 and abs(precision - accuracy) < 1e-9 and accuracy < 1:
        which = "the positive class only"
    else:
        return None
    return (
        f"This classifier answered {which}, so its {accuracy:.0%} accuracy is just the share of "
        "that class in the validation set (precision, recall and F1 say so). Train for more "
        "epochs, balance the classes, or check that the positive class is the one you meant."
    )


# The one number the jobs list shows per job, in order of preference.
HEADLINE = (
    "classification/accuracy",
    "full_validation_loss",
    "validation_loss",
    "training_loss",
)


def headline(metrics: dict[str, Any]) -> str:
    for key in HEADLINE:
        value = metrics.get(key)
        if isinstance(value, int | float):
            return f"{metric_label(key)} {format_metric(key, float(value))}"
    return ""
