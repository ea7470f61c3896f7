"""bench/quality: the suite's metrics on hand-made pairs, and the build of its five tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.quality import scoring, tasks


def test_classification_accuracy_and_macro_f1() -> None:
    pairs = [(" a", " a"), (" a", " b"), (" b", " b\nmore"), (" c", " nonsense")]

    assert scoring.accuracy(pairs) == 0.5
    # F1: a = 2/3 (1 tp, 1 fn), b = 2/3 (1 tp, 1 fp), c = 0.
    assert scoring.macro_f1(pairs) == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def test_json_scores_count_fields_and_list_items() -> None:
    want = json.dumps({"script": "LATIN", "case": "small", "letter": "E", "marks": ["ACUTE"]})
    pairs = [
        (want, " " + want),
        (want, json.dumps({"script": "LATIN", "case": "capital", "letter": "E", "marks": []})),
        (want, "not json"),
    ]

    result = scoring.json_scores(pairs)

    assert result["valid_json"] == pytest.approx(2 / 3)
    assert result["exact_match"] == pytest.approx(1 / 3)
    # tp 4 + 2, fp 1 (case), fn 2 + 4 (case and marks; all four of the third).
    assert result["field_f1"] == pytest.approx(2 * 6 / (2 * 6 + 1 + 6))


def test_rouge_l_is_the_lcs_f1_of_words() -> None:
    assert scoring.rouge_l([("Return the sum of values.", "return the sum")]) == pytest.approx(
        2 * 1.0 * 0.6 / 1.6
    )
    assert scoring.rouge_l([("abc", "xyz")]) == 0.0


def test_build_writes_nested_sizes_fixed_splits_and_licences(tmp_path: Path) -> None:
    manifest = tasks.build(tmp_path)

    assert set(manifest["tasks"]) == {
        "unicode_category",
        "stdlib_module",
        "letter_fields",
        "docstring_summary",
        "codepoint_chat",
    }
    kinds = [t["kind"] for t in manifest["tasks"].values()]
    assert kinds.count("classification") == 2
    assert {"extraction", "generation", "chat"} <= set(kinds)
    for name, task in manifest["tasks"].items():
        assert task["licences"] and task["test"] == tasks.TEST and task["valid"] == tasks.VALID
        directory = tmp_path / name
        test = (directory / "test.jsonl").read_text().splitlines()
        small = (directory / "train_100.jsonl").read_text().splitlines()
        large = (directory / "train_500.jsonl").read_text().splitlines()
        assert len(small) == 100 and large[:100] == small  # nested
        assert not set(test) & set(large)  # held out
    categories = {
        json.loads(line)["completion"]
        for line in (tmp_path / "unicode_category" / "test.jsonl").read_text().splitlines()
    }
    assert len(categories) >= 5
    modules = {
        json.loads(line)["completion"]
        for line in (tmp_path / "stdlib_module" / "test.jsonl").read_text().splitlines()
    }
    assert len(modules) >= 5
    # The same build twice is the same data.
    again = tasks.build(tmp_path / "again")
    assert again["tasks"] == manifest["tasks"]
    assert (tmp_path / "again" / "letter_fields" / "test.jsonl").read_text() == (
        tmp_path / "letter_fields" / "test.jsonl"
    ).read_text()


def test_sweep_table_averages_seeds_and_means_common_cells(tmp_path: Path) -> None:
    from bench.quality.sweep import table

    hp = {"n_epochs": 2, "batch_size": 8, "learning_rate_multiplier": 0.25}
    base = {"task": "stdlib_module", "size": 500, "hyperparameters": hp, "job_seconds": 120}
    rows = [
        base | {"rule": "small", "early_stopping": "auto", "seed": 0, "score": 0.88},
        base | {"rule": "small", "early_stopping": "auto", "seed": 1, "score": 0.91},
        base | {"rule": "openai", "early_stopping": False, "score": 0.90},
        base
        | {"task": "unicode_category", "rule": "openai", "early_stopping": False, "score": 0.5},
    ]
    path = tmp_path / "sweep.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    text = table(path)

    assert "| stdlib_module (accuracy) | 500 | 89.5 <sub>2 seeds: 88.0, 91.0</sub>" in text
    assert "| **mean of 1** | | **89.5** | **90.0** |" in text


def test_the_sms_benchmark_reports_the_model_the_run_produced() -> None:
    from bench.quality.run import final_accuracy

    epochs = [{"step": 63, "accuracy": 0.99}, {"step": 126, "accuracy": 0.98}]
    assert final_accuracy(epochs, {"step": 63}) == 0.99  # the selected epoch's
    assert final_accuracy(epochs, None) == 0.98  # without selection, the last
    assert final_accuracy([], None) is None


def test_a_sweep_rule_sets_the_base_models_lora_shape_for_its_run_only(db: None) -> None:
    from bench.quality.sweep import parse_rule, resolved, rule_on_base_model
    from models_app.models import BaseModel

    rule = "small:n_epochs=3;lora_rank=16;lora_target_modules=q_proj+v_proj;warmup_ratio=0.1"
    assert parse_rule(rule)[1]["lora_rank"] == "16"
    assert resolved(rule, 500, selecting=True)["n_epochs"] == 3  # the rule's own epochs
    assert resolved("small", 500, selecting=True)["n_epochs"] == 6  # what "auto" would give
    assert resolved("small", 500, selecting=False)["n_epochs"] == 3
    with pytest.raises(SystemExit, match="lora_r"):
        parse_rule("small:lora_r=16")

    with rule_on_base_model("SmolLM2-135M-Instruct", rule) as shape:
        base = BaseModel.objects.get(name="SmolLM2-135M-Instruct")
        assert (base.lora_rank, base.lora_target_modules, base.warmup_ratio) == (
            16,
            "q_proj,v_proj",
            0.1,
        )
        assert shape == {
            "lora_rank": 16,
            "lora_target_modules": "q_proj,v_proj",
            "warmup_ratio": 0.1,
        }
    base.refresh_from_db()
    assert (base.lora_rank, base.lora_target_modules, base.warmup_ratio) == (None, "", None)
