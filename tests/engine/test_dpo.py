"""DPO in the engine: the loss against a hand computation on a tiny model, training that
raises the preference accuracy, the reference (adapter disabled, or the fine-tune continued
from), the results columns, and resume."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from engine import TrainSpec, dpo, train
from engine.data import Tokenizing, load_pairs
from engine.metrics import DPO_COLUMNS
from engine.models import load_model_and_tokenizer
from tests.engine.conftest import WORDS, write_jsonl
from tests.engine.test_trainer import Recorder, read_rows, spec_for


def pair_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Each question has a right answer ("yes" + its first word) and a wrong one ("no")."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(3)]
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": f"{i} {' '.join(words)}?"}]},
                "preferred_output": [{"role": "assistant", "content": f"yes {words[0]}"}],
                "non_preferred_output": [{"role": "assistant", "content": "no"}],
            }
        )
    return rows


def sequence_logp(model: Any, tokenizer: Any, row: dict[str, Any], key: str) -> float:
    """log π(output | input) by hand: the full chat rendered by the template, every token of the
    output turn (content and end-of-turn marker) scored by a plain forward of the model."""
    messages = row["input"]["messages"] + row[key]
    prompt = tokenizer.apply_chat_template(
        row["input"]["messages"], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # The turn is everything the template writes after the generation prompt (as supervised
    # chat training counts it: engine.chat_format.render_chat).
    n_turn = len(ids) - n_prompt
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logps = F.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logps[n_prompt - 1 : n_prompt - 1 + n_turn].sum())


def test_reference_log_probs_and_loss_match_a_hand_computation(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = pair_rows(3)
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    model.eval()
    pairs, stats = load_pairs(path, Tokenizing(tokenizer, 0.0), 512, "truncate")
    assert stats.n_examples == 3

    from engine.trainer import (
        ATTENTION,
        Runtime,
        _split_model,
        _token_logps,
        register_packed_attention,
    )

    register_packed_attention()
    packed, _ = load_model_and_tokenizer(
        tiny_model_dir, device="cpu", attn_implementation=ATTENTION
    )
    packed.eval()
    core, head = _split_model(packed)
    runtime = Runtime(packed, core, head, tokenizer, "cpu", False, tiny_model_dir, "full")

    def packs(items: Any) -> Any:
        from engine.data import make_pair_packs

        return make_pair_packs(items, 4096)

    dpo.fill_reference(pairs, lambda pack: _token_logps(runtime, pack), packs)
    for pair, row in zip(pairs, rows, strict=True):
        expected = (
            sequence_logp(model, tokenizer, row, "preferred_output"),
            sequence_logp(model, tokenizer, row, "non_preferred_output"),
        )
        assert pair.reference == pytest.approx(expected, abs=1e-3)

    # The loss by the formula: with the policy equal to the reference every margin is 0 and the
    # loss log 2; shifted log-probs give −log σ(β·Δ).
    policy = torch.tensor([[-1.0, -3.0], [-2.0, -1.0]])
    reference = torch.tensor([[-2.0, -2.0], [-2.0, -2.0]])
    losses, margins = dpo.dpo_loss(policy, reference, 0.5)
    assert margins.tolist() == pytest.approx([1.0, -0.5])
    assert losses.tolist() == pytest.approx(
        [-math.log(1 / (1 + math.exp(-1.0))), -math.log(1 / (1 + math.exp(0.5)))]
    )
    same, zero = dpo.dpo_loss(reference, reference, 0.1)
    assert same.tolist() == pytest.approx([math.log(2)] * 2)
    assert zero.tolist() == [0.0, 0.0]


def dpo_spec(model_dir: Path, train: Path, out: Path, **overrides: Any) -> TrainSpec:
    values = {"objective": "dpo", "beta": 0.5, "n_epochs": 3, "batch_size": 4}
    values.update(overrides)
    return spec_for(model_dir, train, out, **values)


def test_dpo_lora_raises_preference_accuracy_from_the_disabled_adapter_reference(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", pair_rows(8))
    valid_path = write_jsonl(tmp_path / "valid.jsonl", pair_rows(4, seed=1))
    hooks = Recorder()
    result = train(
        dpo_spec(
            tiny_model_dir,
            train_path,
            tmp_path / "out",
            validation_path=str(valid_path),
            validation_every_n_steps=1,
        ),
        hooks,
    )
    assert result.status == "succeeded"
    assert result.hyperparameters["beta"] == 0.5
    rows = read_rows(result.results_csv)
    assert list(rows[0]) == DPO_COLUMNS
    # At step 1 the adapter is still ~zero: the policy is the reference, the loss log 2.
    assert float(rows[0]["training_loss"]) == pytest.approx(math.log(2), abs=1e-3)
    assert float(rows[0]["training_reward_margin"]) == pytest.approx(0, abs=1e-3)
    last = rows[-1]
    assert float(last["training_loss"]) < math.log(2)
    assert float(last["validation_preference_accuracy"]) >= 0.75
    assert float(last["validation_reward_margin"]) > 0
    assert any("reference log-probabilities of 12 preference pairs" in m for _, m in hooks.events)
    assert (Path(result.output_dir) / dpo.REFERENCE_FILE).is_file()


def test_dpo_continued_from_a_supervised_fine_tune_uses_it_as_reference(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    sft_rows = [
        {"messages": [*r["input"]["messages"], *r["preferred_output"]]} for r in pair_rows(8)
    ]
    sft = train(
        spec_for(tiny_model_dir, write_jsonl(tmp_path / "sft.jsonl", sft_rows), tmp_path / "sft")
    )
    train_path = write_jsonl(tmp_path / "train.jsonl", pair_rows(8))
    result = train(
        dpo_spec(
            tiny_model_dir, train_path, tmp_path / "out", continue_from=sft.model_dir, n_epochs=1
        )
    )
    first = read_rows(result.results_csv)[0]
    # The reference is the SFT adapter the run starts from, not the base: margin 0 at step 1.
    assert float(first["training_loss"]) == pytest.approx(math.log(2), abs=1e-3)
    assert float(first["training_reward_margin"]) == pytest.approx(0, abs=1e-3)


def test_dpo_full_fine_tuning_and_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    train_path = write_jsonl(tmp_path / "train.jsonl", pair_rows(8))
    whole = train(dpo_spec(tiny_model_dir, train_path, tmp_path / "whole", method="full"))
    first = read_rows(whole.results_csv)[0]
    assert float(first["training_loss"]) == pytest.approx(math.log(2), abs=1e-3)

    stopped = train(
        dpo_spec(tiny_model_dir, train_path, tmp_path / "run", method="full"),
        Recorder(stop_after=3),
    )
    assert stopped.status == "stopped"
    assert stopped.resume_checkpoint is not None
    assert (Path(stopped.resume_checkpoint) / dpo.REFERENCE_FILE).is_file()
    resumed = train(
        dpo_spec(tiny_model_dir, train_path, tmp_path / "run", method="full", resume=True)
    )
    assert resumed.status == "succeeded"
    a, b = read_rows(whole.results_csv), read_rows(resumed.results_csv)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert float(b[-1]["training_loss"]) == pytest.approx(float(a[-1]["training_loss"]), rel=1e-3)
