"""How the job page names the results file's columns."""

from __future__ import annotations

import pytest

from jobs.charts import _family, metric_label


@pytest.mark.parametrize(
    ("column", "label"),
    [
        ("training_loss", "Training loss"),
        ("full_validation_token_accuracy", "Full validation token accuracy"),
        ("classification/f1.0", "F1"),
        ("classification/f0.5", "F0.5"),
        ("classification/auroc", "AUROC"),
        ("generation/rouge_l", "ROUGE-L of greedy generations"),
    ],
)
def test_a_column_is_named_as_people_read_it(column: str, label: str) -> None:
    assert metric_label(column) == label


def test_the_rouge_chart_says_it_scores_a_sample() -> None:
    # Greedy generations are scored on a sample of at most 100 validation examples.
    assert _family("generation/rouge_l") == ("generation/rouge_l", "validation sample")
    assert _family("full_validation_loss") == ("loss", "full validation")
