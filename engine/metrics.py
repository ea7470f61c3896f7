"""Metrics for `compiled_results.csv`: the legacy column names and the classification metrics.

The classification metrics are written with numpy rather than imported from scikit-learn (a
dev-only dependency); tests check them against scikit-learn, including its tie handling and its
conventions for degenerate inputs (0 where a ratio is 0/0).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

BASE_COLUMNS = [
    "step",
    "elapsed_tokens",
    "elapsed_examples",
    "training_loss",
    "training_sequence_accuracy",
    "training_token_accuracy",
]
VALIDATION_COLUMNS = [
    "validation_loss",
    "validation_sequence_accuracy",
    "validation_token_accuracy",
]
# With best-checkpoint selection: the whole validation set at each epoch end, and on the winning
# checkpoint's row, a 1. Every column stays numeric: the 0.28 CLI's `wandb sync` reads the file
# with pandas and calls np.isnan on each cell (the reason is in the events and the job).
FULL_VALIDATION_COLUMNS = [
    "full_validation_loss",
    "full_validation_sequence_accuracy",
    "full_validation_token_accuracy",
]
# Free-text jobs that select also score greedy generations at each epoch end (engine.free_text).
GENERATION_COLUMNS = ["generation/rouge_l"]
SELECTION_COLUMN = "selected_checkpoint"
# A DPO run's (engine.dpo): `*_loss` is the DPO loss; no token accuracies (no single target).
DPO_COLUMNS = [
    "step",
    "elapsed_tokens",
    "elapsed_examples",
    "training_loss",
    "training_reward_margin",
    "training_preference_accuracy",
    "validation_loss",
    "validation_reward_margin",
    "validation_preference_accuracy",
]
MULTICLASS_COLUMNS = ["classification/accuracy", "classification/weighted_f1_score"]


def beta_column(beta: float) -> str:
    # OpenAI writes the beta as a float: f1.0, f0.5, f2.0.
    return f"classification/f{float(beta)}"


def binary_columns(betas: Sequence[float]) -> list[str]:
    return [
        "classification/accuracy",
        "classification/precision",
        "classification/recall",
        "classification/auroc",
        "classification/auprc",
        *(beta_column(b) for b in betas),
    ]


def results_columns(
    classification: str | None,
    betas: Sequence[float] = (1.0,),
    *,
    selection: bool = False,
    generation: bool = False,
) -> list[str]:
    """The header of compiled_results.csv (reference §4.1). `classification` is None, "binary" or
    "multiclass". The validation columns are always present: without a validation file they
    stay empty, as in OpenAI's files. `selection` adds the best-checkpoint columns at the end
    (readers of OpenAI's files look columns up by name), with `generation` the generation
    metric's too. "dpo" gives a DPO run's columns."""
    if classification == "dpo":
        return list(DPO_COLUMNS)
    columns = BASE_COLUMNS + VALIDATION_COLUMNS
    if classification == "binary":
        columns += binary_columns(betas)
    elif classification == "multiclass":
        columns += MULTICLASS_COLUMNS
    if selection:
        columns += FULL_VALIDATION_COLUMNS
        columns += GENERATION_COLUMNS if generation else []
        columns.append(SELECTION_COLUMN)
    return columns


def annotate_row(path: Path, step: int, column: str, text: str) -> None:
    """Write `text` (a number: see SELECTION_COLUMN) into `column` of the row of `step` (the file is small: one row a step)."""
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = list(reader.fieldnames or [])
        rows = list(reader)
    for row in rows:
        if row.get("step") == str(step):
            row[column] = text
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _cell(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


class ResultsWriter:
    """Appends metric rows to compiled_results.csv, flushing each so a crash loses nothing."""

    def __init__(self, path: Path, columns: list[str], restore_from: Path | None = None) -> None:
        self.path = path
        self.columns = columns
        kept: list[dict[str, str]] = []
        if restore_from is not None and restore_from.is_file():
            # Resuming: the rows as they were at the checkpoint (its snapshot), none after it.
            with open(restore_from, newline="") as handle:
                kept = list(csv.DictReader(handle))
        self._handle = open(path, "w", newline="")  # noqa: SIM115 (closed in close())
        self._writer = csv.DictWriter(self._handle, fieldnames=columns, extrasaction="ignore")
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow(row)
        self._handle.flush()

    def write(self, row: Mapping[str, float | int | None]) -> None:
        self._writer.writerow({c: _cell(row.get(c)) for c in self.columns})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _safe_div(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _binary_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct score threshold, highest first
    (tied scores form one threshold, as in scikit-learn)."""
    order = np.argsort(-scores, kind="mergesort")
    scores, y_true = scores[order], y_true[order]
    distinct = np.where(np.diff(scores))[0]
    ends = np.r_[distinct, y_true.size - 1]
    tps = np.cumsum(y_true)[ends]
    fps = 1 + ends - tps
    return tps.astype(float), fps.astype(float)


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal); NaN when only one class is present."""
    y, s = np.asarray(y_true, dtype=float), np.asarray(scores, dtype=float)
    if y.min() == y.max():
        return math.nan
    tps, fps = _binary_curve(y, s)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def average_precision(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve as a step sum (scikit-learn's
    average_precision_score, no interpolation)."""
    y, s = np.asarray(y_true, dtype=float), np.asarray(scores, dtype=float)
    if y.sum() == 0:
        return math.nan
    tps, fps = _binary_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


def binary_metrics(
    y_true: ArrayLike, positive_scores: ArrayLike, betas: Sequence[float] = (1.0,)
) -> dict[str, float]:
    """Binary metrics at OpenAI's 0.5 threshold on the positive class's probability."""
    y = np.asarray(y_true, dtype=int)
    s = np.asarray(positive_scores, dtype=float)
    predicted = (s >= 0.5).astype(int)
    tp = float(np.sum((predicted == 1) & (y == 1)))
    fp = float(np.sum((predicted == 1) & (y == 0)))
    fn = float(np.sum((predicted == 0) & (y == 1)))
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    row = {
        "classification/accuracy": float(np.mean(predicted == y)),
        "classification/precision": precision,
        "classification/recall": recall,
        "classification/auroc": roc_auc(y, s),
        "classification/auprc": average_precision(y, s),
    }
    for beta in betas:
        b2 = float(beta) ** 2
        row[beta_column(beta)] = _safe_div((1 + b2) * precision * recall, b2 * precision + recall)
    return row


def multiclass_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Accuracy and support-weighted F1 (scikit-learn's f1_score(average="weighted"))."""
    y, p = np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)
    weighted = 0.0
    for label in np.unique(y):
        tp = float(np.sum((p == label) & (y == label)))
        precision = _safe_div(tp, float(np.sum(p == label)))
        recall = _safe_div(tp, float(np.sum(y == label)))
        f1 = _safe_div(2 * precision * recall, precision + recall)
        weighted += f1 * float(np.sum(y == label))
    return {
        "classification/accuracy": float(np.mean(p == y)),
        "classification/weighted_f1_score": weighted / y.size,
    }


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return float(sum(items) / len(items)) if items else math.nan
