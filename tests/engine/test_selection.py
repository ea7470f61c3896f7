"""Best-checkpoint selection and early stopping: the rule (engine.selection) on its own, and
engine.train on a tiny random model whose validation data first improves, then gets worse."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from engine import train
from engine.metrics import FULL_VALIDATION_COLUMNS, SELECTION_COLUMN
from engine.selection import ACCURACY, LOSS, ROUGE_L, Evaluation, Selection
from tests.engine.conftest import word_rows, write_jsonl
from tests.engine.test_trainer import Recorder, spec_for

# --- the rule ---------------------------------------------------------------------------------


def ev(step: int, loss: float, accuracy: float | None = None) -> Evaluation:
    metrics = {LOSS: loss}
    if accuracy is not None:
        metrics[ACCURACY] = accuracy
    return Evaluation(step=step, epoch=step // 10, metrics=metrics)


def test_loss_picks_the_lowest_and_patience_counts_evaluations_since() -> None:
    selection = Selection()
    for e in (ev(10, 1.0), ev(20, 0.8), ev(30, 0.9), ev(40, 0.85)):
        selection.add(e)

    assert selection.metric == LOSS
    assert selection.best is not None and selection.best.step == 20
    assert selection.since_best == 2
    assert selection.should_stop(2) and not selection.should_stop(3)
    assert not selection.should_stop(None)
    assert selection.reason(stopped_early=True, patience=2) == (
        "step 20 (epoch 2) has the lowest full validation loss 0.8000 of 4 evaluations on the "
        "whole validation set; stopped early: 2 evaluations in a row without improvement"
    )


def test_accuracy_comes_first_and_loss_breaks_ties_and_the_earlier_wins_a_full_tie() -> None:
    selection = Selection()
    for e in (ev(10, 0.9, 0.80), ev(20, 0.7, 0.90), ev(30, 0.6, 0.90), ev(40, 0.6, 0.90)):
        selection.add(e)

    assert selection.metric == ACCURACY
    assert selection.best is not None and selection.best.step == 30  # same accuracy, lower loss
    assert "(tied; full validation loss" in selection.reason(stopped_early=False, patience=None)
    assert selection.since_best == 1  # step 40 ties: no improvement


def test_rouge_l_says_it_scored_the_validation_sample() -> None:
    # Generations are scored on a sample of at most 100 validation examples, not the whole file.
    selection = Selection()
    for step, rouge in ((10, 0.2), (20, 0.3)):
        selection.add(Evaluation(step=step, epoch=step // 10, metrics={LOSS: 1.0, ROUGE_L: rouge}))

    assert selection.reason(stopped_early=False, patience=None) == (
        "step 20 (epoch 2) has the highest ROUGE-L of greedy generations 0.3000 of 2 "
        "evaluations on the validation sample"
    )


def test_selection_survives_a_resume() -> None:
    selection = Selection()
    selection.add(ev(10, 1.0))
    selection.add(ev(20, 1.2))

    restored = Selection.restore(selection.dump())

    assert restored.best == selection.best and restored.since_best == 1


# --- the trainer ------------------------------------------------------------------------------


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_validation_that_gets_worse_stops_early_and_keeps_the_best_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = word_rows(8)
    train_path = write_jsonl(tmp_path / "train.jsonl", rows)
    # Same prompts, a word the training answers never use: the better the model learns them, the
    # worse it does here, so the first epoch's checkpoint is the best (validation loss 4.8, then
    # 6.1). Full fine-tuning: LoRA on the random tiny model barely moves its loss, and noise
    # decided which epoch was better.
    wrong = [{**r, "completion": " zebra zebra zebra"} for r in rows]
    valid_path = write_jsonl(tmp_path / "valid.jsonl", wrong)
    hooks = Recorder()

    result = train(
        spec_for(
            tiny_model_dir,
            train_path,
            tmp_path / "out",
            validation_path=str(valid_path),
            n_epochs=6,
            method="full",
            base_learning_rate=2e-2,
            best_checkpoint=True,
            early_stopping_patience=1,
        ),
        hooks,
    )

    assert result.status == "succeeded"
    assert result.selection is not None
    evaluations = result.selection["evaluations"]
    losses = [e["metrics"][LOSS] for e in evaluations]
    assert len(evaluations) == 2, losses  # epoch 2 did worse: patience 1 stops there
    assert losses[1] > losses[0]
    assert result.selection["stopped_early"] is True
    assert result.selection["step"] == 4 and result.steps == 8  # 4 steps an epoch
    assert Path(result.model_dir) == tmp_path / "out" / "checkpoints" / "step-4" / "model"
    assert result.final_metrics["best_checkpoint_step"] == 4
    assert result.final_metrics[LOSS] == losses[0]
    messages = [m for _, m in hooks.events]
    assert any(m.startswith("Early stopping after epoch 2/6") for m in messages)
    assert any(m.startswith("Best checkpoint: step 4 (epoch 1)") for m in messages)
    table = read_rows(result.results_csv)
    assert set(FULL_VALIDATION_COLUMNS) | {SELECTION_COLUMN} <= set(table[0])
    marked = [r for r in table if r[SELECTION_COLUMN]]
    assert [r["step"] for r in marked] == ["4"]
    assert marked[0][SELECTION_COLUMN] == "1"
    assert [r["step"] for r in table if r["full_validation_loss"]] == ["4", "8"]


def test_validation_that_keeps_improving_trains_every_epoch_and_keeps_the_last(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", word_rows(8))
    hooks = Recorder()

    result = train(
        spec_for(
            tiny_model_dir,
            train_path,
            tmp_path / "out",
            validation_path=str(train_path),
            n_epochs=3,
            best_checkpoint=True,
            early_stopping_patience=1,
        ),
        hooks,
    )

    assert result.selection is not None and result.selection["stopped_early"] is False
    losses = [e["metrics"][LOSS] for e in result.selection["evaluations"]]
    assert losses == sorted(losses, reverse=True) and len(losses) == 3
    assert result.selection["step"] == result.steps == 12
    assert Path(result.model_dir) == tmp_path / "out" / "model"


def test_without_selection_nothing_changes(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", word_rows(8))
    spec: Any = spec_for(
        tiny_model_dir, train_path, tmp_path / "out", validation_path=str(train_path)
    )

    result = train(spec)

    assert result.selection is None
    assert SELECTION_COLUMN not in read_rows(result.results_csv)[0]
    assert "best_checkpoint_step" not in result.final_metrics


def test_a_resumed_run_selects_over_the_epochs_before_the_interruption_too(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = word_rows(8)
    train_path = write_jsonl(tmp_path / "train.jsonl", rows)
    valid_path = write_jsonl(
        tmp_path / "valid.jsonl", [{**r, "completion": " moon moon moon"} for r in rows]
    )
    common: dict[str, Any] = {
        "validation_path": str(valid_path),
        "n_epochs": 3,
        "base_learning_rate": 5e-2,
        "best_checkpoint": True,
    }
    straight = train(spec_for(tiny_model_dir, train_path, tmp_path / "straight", **common))

    # Stopped mid-epoch 2 (step 6 of 12), after epoch 1's evaluation; then resumed.
    out = tmp_path / "interrupted"
    stopped = train(spec_for(tiny_model_dir, train_path, out, **common), Recorder(stop_after=6))
    resumed = train(spec_for(tiny_model_dir, train_path, out, resume=True, **common))

    assert stopped.status == "stopped" and resumed.status == "succeeded"
    assert resumed.selection is not None and straight.selection is not None
    assert [e["step"] for e in resumed.selection["evaluations"]] == [4, 8, 12]
    assert resumed.selection["step"] == straight.selection["step"]
    for a, b in zip(
        resumed.selection["evaluations"], straight.selection["evaluations"], strict=True
    ):
        assert a["metrics"][LOSS] == pytest.approx(b["metrics"][LOSS], rel=1e-4)


# --- ranking labelled data by accuracy --------------------------------------------------------


def labelled(n: int, labels: tuple[str, ...] = (" spam", " ham")) -> list[dict[str, str]]:
    return [{"prompt": f"message {i} ->", "completion": labels[i % len(labels)]} for i in range(n)]


def examples(rows: list[dict[str, str]]) -> list[Any]:
    from engine.data import Example

    return [Example([1], [0.0], [False], 1, r["completion"]) for r in rows]


def test_a_closed_label_set_is_a_few_labels_each_seen_in_training() -> None:
    from engine.trainer import closed_label_set

    train_rows = labelled(12, (" a", " b", " c"))
    assert closed_label_set(examples(train_rows), []) == [" a", " b", " c"]
    # A validation label training never saw, too few examples a label, or free text: not a set.
    assert closed_label_set(examples(train_rows), examples([{"completion": " d"}])) is None
    assert closed_label_set(examples(labelled(11, (" a", " b", " c"))), []) is None
    assert closed_label_set(examples(word_rows(40)), []) is None
    assert closed_label_set(examples(labelled(12, (" a",))), []) is None


def test_best_checkpoint_ranks_labelled_data_by_accuracy_unasked(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", labelled(12))
    valid_path = write_jsonl(tmp_path / "valid.jsonl", labelled(6))
    hooks = Recorder()

    result = train(
        spec_for(
            tiny_model_dir,
            train_path,
            tmp_path / "out",
            validation_path=str(valid_path),
            best_checkpoint=True,
        ),
        hooks,
    )

    assert result.selection is not None and result.selection["metric"] == ACCURACY
    assert all(ACCURACY in e["metrics"] for e in result.selection["evaluations"])
    assert "classification/accuracy" in read_rows(result.results_csv)[0]
    assert any(m.startswith("The completions are 2 labels") for _, m in hooks.events)


def test_labelled_data_without_selection_gets_no_metrics_it_did_not_ask_for(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", labelled(12))

    result = train(
        spec_for(tiny_model_dir, train_path, tmp_path / "out", validation_path=str(train_path))
    )

    assert "classification/accuracy" not in read_rows(result.results_csv)[0]
