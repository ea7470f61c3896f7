"""Data to tensors: loss weights per format, the too-long policy, packing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from engine.data import Tokenizing, load_examples, make_packs, padded_length
from engine.models import load_model_and_tokenizer, load_tokenizer
from engine.spec import TrainingError
from engine.trainer import ATTENTION, _hidden, register_packed_attention
from tests.engine.conftest import write_jsonl


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(tiny_model_dir)


def test_prompt_completion_weights(tokenizer: Any) -> None:
    tokenizing = Tokenizing(tokenizer, prompt_loss_weight=0.25)

    example = tokenizing.example({"prompt": "Hello there", "completion": " General"}, "row")

    prompt = tokenizing.encode("Hello there")
    completion = tokenizing.encode(" General")
    assert example.input_ids == prompt + completion + [tokenizer.eos_token_id]
    # Nothing predicts the first token; the rest of the prompt is scaled, the completion and EOS
    # count fully.
    assert example.weights == [0.0] + [0.25] * (len(prompt) - 1) + [1.0] * (len(completion) + 1)
    assert example.target == [False] * len(prompt) + [True] * (len(completion) + 1)
    assert example.prompt_len == len(prompt)


def _assistant_text(tokenizer: Any, example: Any, weighted_only: bool) -> str:
    keep = [
        t
        for t, w, g in zip(example.input_ids, example.weights, example.target, strict=True)
        if (w > 0 if weighted_only else g)
    ]
    return str(tokenizer.decode(keep))


def test_chat_loss_only_on_assistant_turns(tokenizer: Any) -> None:
    tokenizing = Tokenizing(tokenizer, prompt_loss_weight=0.5)  # must not apply to chat
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye."},
    ]

    example = tokenizing.example({"messages": messages}, "row")

    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(example.input_ids) == full
    assert _assistant_text(tokenizer, example, True) == "Hello!<|im_end|>\nGoodbye.<|im_end|>\n"
    assert set(example.weights) == {0.0, 1.0}
    assert example.completion == "Goodbye."


def test_chat_weight_zero_excludes_a_turn(tokenizer: Any) -> None:
    tokenizing = Tokenizing(tokenizer, prompt_loss_weight=0.01)
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Bad answer", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Good answer", "weight": 1},
    ]

    example = tokenizing.example({"messages": messages}, "row")

    assert _assistant_text(tokenizer, example, True) == "Good answer<|im_end|>\n"
    assert _assistant_text(tokenizer, example, False) == "Good answer<|im_end|>\n"


def test_chat_without_assistant_is_an_error(tokenizer: Any) -> None:
    with pytest.raises(TrainingError, match="assistant"):
        Tokenizing(tokenizer, 0.01).example({"messages": [{"role": "user", "content": "x"}]}, "L1")


@pytest.mark.parametrize("row", [{"text": "x"}, {"prompt": 1, "completion": "a"}])
def test_malformed_rows_are_errors(tokenizer: Any, row: dict[str, Any]) -> None:
    with pytest.raises(TrainingError, match="Line 3"):
        Tokenizing(tokenizer, 0.01).example(row, "Line 3")


def test_too_long_truncate_and_drop(tokenizer: Any, tmp_path: Path) -> None:
    rows = [
        {"prompt": "short ->", "completion": " yes"},
        {"prompt": "long " * 50, "completion": " no"},
    ]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    tokenizing = Tokenizing(tokenizer, 0.01)

    kept, truncated = load_examples(path, tokenizing, 20, "truncate")
    left, dropped = load_examples(path, tokenizing, 20, "drop")

    assert truncated.n_truncated == 1
    assert truncated.n_dropped == 0
    assert [len(e) for e in kept][1] == 20
    assert dropped.n_dropped == 1
    assert len(left) == 1


def test_packs_respect_the_budget_and_restart_positions(tokenizer: Any) -> None:
    tokenizing = Tokenizing(tokenizer, 0.01)
    examples = [
        tokenizing.example({"prompt": "a " * n, "completion": " b"}, "row") for n in (3, 5, 9, 2)
    ]
    budget = len(examples[0]) + len(examples[1])

    packs = list(make_packs(examples, budget))

    # In order: 3+5 fill the budget, 9 cannot share with anything after it.
    assert [p.n_examples for p in packs] == [2, 1, 1]
    assert all(p.n_tokens <= budget for p in packs)
    first = packs[0]
    assert first.seq_lens == [len(examples[0]), len(examples[1])]
    assert first.position_ids[0].tolist() == list(range(len(examples[0]))) + list(
        range(len(examples[1]))
    )
    # Each loss position predicts the next token of the same example.
    for source, label in zip(first.source.tolist(), first.labels.tolist(), strict=True):
        assert first.input_ids[0, source + 1] == label


def test_bucketed_packs_add_an_isolated_filler(tokenizer: Any) -> None:
    tokenizing = Tokenizing(tokenizer, 0.01)
    example = tokenizing.example({"prompt": "a b c", "completion": " d"}, "row")

    (pack,) = make_packs([example], 100, bucket=16, filler_id=3)

    assert pack.input_ids.shape[1] % 16 == 0
    assert pack.n_tokens == len(example)
    assert sum(pack.seq_lens) == pack.input_ids.shape[1]
    assert int(pack.source.max()) < len(example)  # the filler carries no loss


def test_rows_pad_to_few_shapes_with_little_filler() -> None:
    lengths = range(1, 2049)
    padded = {n: padded_length(n, 16) for n in lengths}

    assert all(p >= n and p % 16 == 0 for n, p in padded.items())
    assert padded[245] == 256 and padded[300] == 320 and padded[1000] == 1024
    assert len(set(padded.values())) == 40  # 16 shapes up to 256 tokens, then 8 per doubling
    assert all(p - n < n / 8 for n, p in padded.items() if n > 128)
    assert [padded_length(n, 1) for n in (1, 245)] == [1, 245]  # no bucket: no filler


def test_packed_attention_matches_separate_forward_passes(tiny_model_dir: Path) -> None:
    register_packed_attention()
    packed_model, _ = load_model_and_tokenizer(
        tiny_model_dir, device="cpu", attn_implementation=ATTENTION
    )
    plain_model, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    generator = torch.Generator().manual_seed(0)
    pieces = [torch.randint(5, 500, (1, n), generator=generator) for n in (7, 3, 12)]
    ids = torch.cat(pieces, 1)
    positions = torch.cat([torch.arange(p.shape[1]) for p in pieces])[None]

    with torch.no_grad():
        packed = _hidden(packed_model.model, "cpu", ids, positions, [7, 3, 12])
        separate = torch.cat([plain_model.model(input_ids=p).last_hidden_state[0] for p in pieces])

    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)
