"""The generation metric that ranks free-text checkpoints (engine.free_text): ROUGE-L itself,
batched greedy generation against one prompt at a time, and a training run that selects by it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine import free_text, train
from engine.data import Example
from engine.metrics import GENERATION_COLUMNS
from engine.models import load_model_and_tokenizer
from engine.selection import LOSS, ROUGE_L, Evaluation, Selection
from engine.trainer import ATTENTION, register_packed_attention
from tests.engine.conftest import word_rows, write_jsonl
from tests.engine.test_selection import read_rows
from tests.engine.test_trainer import Recorder, spec_for


def test_rouge_l_is_the_f1_of_the_longest_common_word_subsequence() -> None:
    # LCS of 5 and 3 words is 3 ("return the sum"): precision 1, recall 0.6.
    assert free_text.rouge_l("Return the sum of values.", "return THE sum") == pytest.approx(0.75)
    assert free_text.rouge_l("a b c", "a b c") == 1.0
    assert free_text.rouge_l("a b c", "x y") == 0.0
    assert free_text.rouge_l("a b", "") == 0.0
    assert free_text.rouge_l("", "") == 1.0  # nothing expected, nothing said


def example(prompt: list[int], completion_tokens: int, text: str) -> Example:
    ids = prompt + [7] * completion_tokens
    return Example(ids, [0.0] * len(ids), [False] * len(ids), len(prompt), text)


def test_setup_keeps_the_order_given_caps_the_examples_and_sizes_the_generation() -> None:
    examples = [example([1, 2, i], 10, f"text {i}") for i in range(150)]
    examples[3] = example([1, 2, 3], 40, "the longest")
    examples[5] = example([1, 2], 5, "   ")  # nothing to compare with: skipped

    work = free_text.setup(examples, [0, 0, 2], pad_id=0)

    assert work is not None
    assert len(work.prompts) == free_text.MAX_EXAMPLES
    assert work.prompts[0] == [1, 2, 0] and work.references[3] == "the longest"
    assert "   " not in work.references
    # Each its reference's length and room past it: a quarter more, at least 8 tokens.
    assert work.budgets[3] == 40 + 10 and work.budgets[0] == 10 + 8
    assert work.stop_ids == [0, 2]
    assert free_text.setup([examples[5]], [0], pad_id=0) is None


def test_batched_greedy_generation_matches_one_prompt_at_a_time(tiny_model_dir: Path) -> None:
    """Left padding must not change what a prompt generates; the trainer's packed attention is
    swapped out for the batch and back in afterwards."""
    from peft import LoraConfig, get_peft_model

    register_packed_attention()
    causal_lm, tokenizer = load_model_and_tokenizer(
        tiny_model_dir, device="cpu", attn_implementation=ATTENTION
    )
    model = get_peft_model(causal_lm, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    model.eval()
    prompts = [tokenizer(text)["input_ids"] for text in ("a", "cat dog sun moon red", "blue sky")]
    work = free_text.FreeText(
        prompts, ["x"] * 3, budgets=[6, 6, 3], stop_ids=[tokenizer.eos_token_id], pad_id=0
    )

    batched = free_text.greedy(model, work, torch.no_grad)
    alone = [
        free_text.greedy(
            model, free_text.FreeText([p], ["x"], [n], work.stop_ids, 0), torch.no_grad
        )
        for p, n in zip(prompts, work.budgets, strict=True)
    ]

    assert batched == [tokens for [tokens] in alone]
    # Each row stops at its own budget (the random model rarely ends its turn).
    assert all(0 < len(tokens) <= n for tokens, n in zip(batched, work.budgets, strict=True))
    assert len(batched[2]) <= 3
    assert causal_lm.config._attn_implementation == ATTENTION


def test_rouge_l_ranks_before_the_loss_which_breaks_ties() -> None:
    selection = Selection()
    for step, loss, rouge in ((10, 1.0, 0.2), (20, 0.8, 0.3), (30, 0.9, 0.4), (40, 0.7, 0.4)):
        selection.add(Evaluation(step, step // 10, {LOSS: loss, ROUGE_L: rouge}))

    assert selection.metric == ROUGE_L
    assert selection.best is not None and selection.best.step == 40
    assert selection.reason(stopped_early=False, patience=None).startswith(
        "step 40 (epoch 4) has the highest ROUGE-L of greedy generations 0.4000 of 4 evaluations"
    )


def test_a_free_text_run_is_ranked_by_rouge_l_and_comparing_checkpoints_agrees(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from engine.evaluate import evaluate_models

    train_path = write_jsonl(tmp_path / "train.jsonl", word_rows(8))
    hooks = Recorder()
    spec = spec_for(
        tiny_model_dir,
        train_path,
        tmp_path / "out",
        validation_path=str(train_path),
        n_epochs=3,
        base_learning_rate=5e-2,
        best_checkpoint=True,
    )

    result = train(spec, hooks)

    assert result.status == "succeeded" and result.selection is not None
    assert result.selection["metric"] == ROUGE_L
    scores = [e["metrics"][ROUGE_L] for e in result.selection["evaluations"]]
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)
    assert "ROUGE-L of greedy generations" in result.selection["reason"]
    assert result.final_metrics[ROUGE_L] == max(scores)
    messages = [m for _, m in hooks.events]
    assert any("free text: checkpoints are ranked by the ROUGE-L" in m for m in messages)
    table = read_rows(result.results_csv)
    assert set(GENERATION_COLUMNS) <= set(table[0])
    assert [r["step"] for r in table if r[ROUGE_L]] == ["4", "8", "12"]
    # The job page's "compare checkpoints" scores the same sample the same way.
    compared = evaluate_models(spec, [str(Path(c.path) / "model") for c in result.checkpoints])
    assert [c[ROUGE_L] for c in compared] == pytest.approx(scores)
