"""The engine side of the scaling forecast: the seeded training subset a ¼ or ½ run trains on,
and the whole-validation-set metric it is compared by (TrainSpec.data_fraction and
final_full_validation)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import Hooks, TrainSpec, train
from engine.data import subset_rows
from engine.spec import subset_size
from tests.conftest import sms_subset


def rows(n: int, labels: list[str] | None = None) -> list[dict[str, Any]]:
    return [
        {"prompt": f"text {i}", "completion": labels[i] if labels else f" unique {i}"}
        for i in range(n)
    ]


def test_subset_size_rounds_and_keeps_at_least_one() -> None:
    assert [subset_size(1000, f) for f in (0.25, 0.5, 1.0)] == [250, 500, 1000]
    assert subset_size(10, 0.25) == 2  # Python rounds 2.5 to even
    assert subset_size(2, 0.25) == 1


def test_subset_is_seeded_deterministic_and_in_file_order() -> None:
    data = rows(40)

    first = subset_rows(data, 0.25, seed=3)

    assert first == subset_rows(data, 0.25, seed=3)
    assert first != subset_rows(data, 0.25, seed=4)
    assert len(first) == 10
    assert [data.index(r) for r in first] == sorted(data.index(r) for r in first)
    assert subset_rows(data, 1.0, seed=3) == data


def test_quarter_subset_sits_inside_the_half() -> None:
    data = rows(101)

    quarter, half = subset_rows(data, 0.25, seed=9), subset_rows(data, 0.5, seed=9)

    assert all(r in half for r in quarter)


def test_class_labels_keep_their_shares() -> None:
    labels = [" spam" if i % 5 == 0 else " ham" for i in range(100)]  # 20% spam

    quarter = subset_rows(rows(100, labels), 0.25, seed=1)

    assert Counter(r["completion"] for r in quarter) == {" ham": 20, " spam": 5}


def test_chat_rows_stratify_by_the_last_assistant_reply() -> None:
    data = [
        {
            "messages": [
                {"role": "user", "content": f"message {i}"},
                {"role": "assistant", "content": "yes" if i < 30 else "no"},
            ]
        }
        for i in range(40)
    ]

    half = subset_rows(data, 0.5, seed=2)

    assert Counter(r["messages"][-1]["content"] for r in half) == {"yes": 15, "no": 5}


class Events(Hooks):
    def __init__(self) -> None:
        self.messages: list[str] = []

    def on_event(self, level: str, message: str) -> None:
        self.messages.append(message)


@pytest.mark.slow
def test_a_quarter_run_trains_on_its_share_and_measures_the_whole_validation_set(
    tiny_model_path: str, tmp_path: Path
) -> None:
    train_path = sms_subset(tmp_path, 40)
    valid_path = sms_subset(tmp_path, 12, name="valid.jsonl", split="valid")
    hooks = Events()
    spec = TrainSpec(
        model_source=tiny_model_path,
        train_path=str(train_path),
        validation_path=str(valid_path),
        output_dir=str(tmp_path / "out"),
        n_epochs=1,
        batch_size=5,
        seed=5,
        data_fraction=0.25,
        final_full_validation=True,
        num_threads=1,
    )

    result = train(spec, hooks)

    assert any(m.startswith("Training on 10 examples") for m in hooks.messages)
    assert result.steps == 2  # 10 examples in batches of 5
    assert 0.0 <= result.final_metrics["full_validation_token_accuracy"] <= 1.0
    assert "full_validation_loss" in result.final_metrics
    header = (tmp_path / "out" / "compiled_results.csv").read_text().splitlines()[0]
    assert "full_validation" not in header  # the results file keeps the reference columns
