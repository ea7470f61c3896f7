"""A generation metric for ranking the checkpoints of free-text jobs (docs/adr/0018).

For a job whose completions are free text (not a closed label set), the validation loss is a
poor guide to what a user measures: on docstring_summary at 100 examples the loss bottomed out
at epoch 2 under every rule tried, while the model's generations kept improving
(docs/benchmarks/quality.md). So at each epoch end the trainer generates greedily for up to
`MAX_EXAMPLES` validation prompts and scores the texts against the references by ROUGE-L F1
(the longest common subsequence of lower-cased words), `generation/rouge_l`.

Generation runs on the model being trained, through transformers' `generate` with SDPA
attention and a KV cache: the packed attention the trainer uses has no padding mask, so it is
swapped out for the duration. Each prompt may generate its own reference's length and a quarter
more (`budget`), and a row stops there within its batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from engine.data import Example

METRIC = "generation/rouge_l"
# Generating is a decode loop per token, far dearer than a loss pass: score a fixed sample.
MAX_EXAMPLES = 100
# The most new tokens any prompt may generate, however long its reference.
MAX_NEW_TOKENS = 256
# Rows per generate() call: fewer, wider decode steps (measured: 32-50 beat 16 and 100 on a
# 2-core CPU).
BATCH = 32


@dataclass
class FreeText:
    prompts: list[list[int]]
    references: list[str]
    budgets: list[int]  # new tokens each prompt may generate
    stop_ids: list[int]
    pad_id: int


def budget(reference_tokens: int) -> int:
    """Room past a reference's length, so that a model that does not stop is seen not to."""
    return min(MAX_NEW_TOKENS, reference_tokens + max(8, reference_tokens // 4))


def setup(examples: Sequence[Example], stop_ids: Sequence[int], pad_id: int) -> FreeText | None:
    """The prompts to generate for and their references (the first MAX_EXAMPLES examples of
    `examples`, in the order given); None when no example has a reference to compare with."""
    chosen = [e for e in examples if e.completion.strip() and e.prompt_len > 0][:MAX_EXAMPLES]
    if not chosen:
        return None
    return FreeText(
        prompts=[e.input_ids[: e.prompt_len] for e in chosen],
        references=[e.completion for e in chosen],
        budgets=[budget(len(e.input_ids) - e.prompt_len) for e in chosen],
        stop_ids=sorted(set(stop_ids)),
        pad_id=pad_id,
    )


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(reference: str, generated: str) -> float:
    """ROUGE-L F1 of two texts: the longest common subsequence of their lower-cased words."""
    a, b = reference.lower().split(), generated.lower().split()
    common = _lcs(a, b) if a and b else 0
    if not common:
        return float(not a and not b)
    precision, recall = common / len(b), common / len(a)
    return 2 * precision * recall / (precision + recall)


Autocast = Callable[[], AbstractContextManager[Any]]


def _left_padded(
    prompts: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids and attention mask of `prompts` padded on the left, so that every row ends
    where generation starts; and their width."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt) :] = torch.tensor(prompt)
        mask[r, width - len(prompt) :] = 1
    return ids, mask, width


def _until_stop(tokens: list[int], stop_ids: Sequence[int]) -> list[int]:
    """`tokens` up to the first stop token (excluded)."""
    stops = [k for k, t in enumerate(tokens) if t in stop_ids]
    return tokens[: stops[0]] if stops else tokens


class _RowBudgets:
    """A stopping criterion that ends each row of a batch at its own token budget, so that one
    row's long reference (or a model that does not stop) no longer keeps the whole batch
    decoding to the longest budget of the sample."""

    def __init__(self, budgets: Sequence[int], prompt_width: int, device: torch.device) -> None:
        # On the model's device once, not copied there at every decode step.
        self.budgets = torch.tensor(budgets, device=device)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_width
        return generated >= self.budgets


@torch.no_grad()
def greedy(model: Any, work: FreeText, autocast: Autocast) -> list[list[int]]:
    """The greedy continuation of each prompt, up to its first stop token (excluded) or its
    budget of new tokens.

    `model` is a transformers causal LM or a PeftModel around one (a LoRA job's)."""
    from transformers import GenerationConfig, StoppingCriteriaList

    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    device = next(model.parameters()).device
    previous = causal_lm.config._attn_implementation
    causal_lm.set_attn_implementation("sdpa")
    out: list[list[int]] = [[] for _ in work.prompts]
    # Prompts of similar length share a batch: less padding.
    order = sorted(range(len(work.prompts)), key=lambda i: len(work.prompts[i]))
    try:
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            budgets = [work.budgets[i] for i in rows]
            ids, mask, width = _left_padded([work.prompts[i] for i in rows], work.pad_id)
            config = GenerationConfig(  # type: ignore[no-untyped-call]  # shipped untyped
                max_new_tokens=max(budgets),
                do_sample=False,
                eos_token_id=work.stop_ids,
                pad_token_id=work.pad_id,
                use_cache=True,
            )
            with autocast():
                generated = model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    stopping_criteria=StoppingCriteriaList([_RowBudgets(budgets, width, device)]),
                )
            for r, i in enumerate(rows):
                tokens = _until_stop(generated[r, width:].tolist(), work.stop_ids)
                out[i] = tokens[: budgets[r]]
    finally:
        causal_lm.set_attn_implementation(previous)
    return out


def score(model: Any, tokenizer: Any, work: FreeText, autocast: Autocast) -> dict[str, float]:
    """`{METRIC: mean ROUGE-L F1}` of the greedy generations against the references."""
    generations = greedy(model, work, autocast)
    texts = [tokenizer.decode(g, skip_special_tokens=True) for g in generations]
    total = sum(rouge_l(ref, text) for ref, text in zip(work.references, texts, strict=True))
    return {METRIC: total / len(work.references)}
