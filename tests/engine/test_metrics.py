"""Classification metrics against scikit-learn, and the results-file header."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from engine.metrics import (
    average_precision,
    binary_metrics,
    multiclass_metrics,
    results_columns,
    roc_auc,
)


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    noisy = np.clip(truth * 0.6 + rng.normal(0.2, 0.3, 200), 0, 1)
    ties = np.round(noisy, 1)  # many tied scores: thresholds must group them as sklearn does
    perfect = truth.astype(float)
    return [(truth, noisy), (truth, ties), (truth, perfect), (truth, np.full(200, 0.5))]


@pytest.mark.parametrize(("truth", "scores"), _cases())
def test_binary_metrics_equal_scikit_learn(truth: np.ndarray, scores: np.ndarray) -> None:
    betas = [0.5, 1.0, 2.0]

    ours = binary_metrics(truth, scores, betas)

    predicted = (scores >= 0.5).astype(int)
    expected = {
        "classification/accuracy": sk.accuracy_score(truth, predicted),
        "classification/precision": sk.precision_score(truth, predicted, zero_division=0),
        "classification/recall": sk.recall_score(truth, predicted, zero_division=0),
        "classification/auroc": sk.roc_auc_score(truth, scores),
        "classification/auprc": sk.average_precision_score(truth, scores),
    }
    for beta in betas:
        expected[f"classification/f{beta}"] = sk.fbeta_score(
            truth, predicted, beta=beta, zero_division=0
        )
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_binary_metrics_with_no_positive_prediction() -> None:
    ours = binary_metrics([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4])

    assert ours["classification/precision"] == 0.0
    assert ours["classification/f1.0"] == 0.0
    assert ours["classification/auroc"] == pytest.approx(0.75)


def test_auroc_is_nan_with_a_single_class() -> None:
    assert math.isnan(roc_auc([1, 1, 1], [0.2, 0.4, 0.9]))
    assert math.isnan(average_precision([0, 0], [0.2, 0.4]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multiclass_metrics_equal_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 150)
    predicted = np.where(rng.random(150) < 0.7, truth, rng.integers(0, 5, 150))  # 4 is unseen

    ours = multiclass_metrics(truth, predicted)

    assert ours["classification/accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    # sklearn averages over the labels present in y_true or y_pred; the unseen label 4 has no
    # support, so its weight is 0 either way.
    assert ours["classification/weighted_f1_score"] == pytest.approx(
        sk.f1_score(truth, predicted, average="weighted", zero_division=0)
    )


def test_results_columns_match_the_reference() -> None:
    base = [
        "step",
        "elapsed_tokens",
        "elapsed_examples",
        "training_loss",
        "training_sequence_accuracy",
        "training_token_accuracy",
        "validation_loss",
        "validation_sequence_accuracy",
        "validation_token_accuracy",
    ]

    assert results_columns(None) == base
    assert results_columns("binary") == base + [
        "classification/accuracy",
        "classification/precision",
        "classification/recall",
        "classification/auroc",
        "classification/auprc",
        "classification/f1.0",
    ]
    assert results_columns("multiclass") == base + [
        "classification/accuracy",
        "classification/weighted_f1_score",
    ]
