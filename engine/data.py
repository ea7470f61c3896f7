"""Training data to tensors: formats, loss weights, length policy and packing.

Each example becomes token ids plus a loss weight per token: weight[i] scales the loss of
predicting token i from the tokens before it. `target[i]` marks the tokens the user wants the model
to produce (the completion, or the assistant turns); accuracies are measured on those only.

Packing puts several examples into one row with positions restarting at 0 for each, and the
attention in engine/trainer.py keeps each example's tokens from seeing the others'. So no
compute is spent on padding, and matmuls see hundreds of rows instead of a few dozen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine import chat_format
from engine.spec import TooLongPolicy, TrainingError, subset_size


@dataclass
class Example:
    input_ids: list[int]
    weights: list[float]  # weights[0] is always 0: nothing predicts the first token
    target: list[bool]
    # For classification metrics: the prompt's tokens and the completion text (prompt/completion
    # data, or the last assistant turn of a chat).
    prompt_len: int
    completion: str

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Pair:
    """A preference pair (DPO): the preferred and the non-preferred completion of one input.

    `reference` holds the reference model's summed log-probabilities of the two outputs'
    tokens (preferred, non-preferred), filled once before training (engine.dpo)."""

    preferred: Example
    non_preferred: Example
    reference: tuple[float, float] | None = None

    def __len__(self) -> int:
        return len(self.preferred) + len(self.non_preferred)


@dataclass
class DataStats:
    n_examples: int = 0
    n_tokens: int = 0
    n_truncated: int = 0
    n_dropped: int = 0
    max_length: int = 0


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed by the with below)
    except OSError as error:
        raise TrainingError(f"Cannot read {path}: {error.strerror}") from error
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise TrainingError(f"Line {number} of {Path(path).name} is not JSON: {error.msg}")
            if not isinstance(row, dict):
                raise TrainingError(f"Line {number} of {Path(path).name} is not a JSON object")
            rows.append(row)
    if not rows:
        raise TrainingError(f"{Path(path).name} contains no examples")
    return rows


class Tokenizing:
    """Turns rows into `Example`s with one tokenizer; holds what is probed once per tokenizer."""

    def __init__(self, tokenizer: Any, prompt_loss_weight: float) -> None:
        self.tokenizer = tokenizer
        self.prompt_loss_weight = float(prompt_loss_weight)
        self.eos_id = int(tokenizer.eos_token_id)
        # Tokens the tokenizer adds in front of a text (a BOS for Llama-2 style models, nothing for
        # SmolLM2). Probing once avoids trusting per-tokenizer flags that differ between versions.
        with_specials = tokenizer("a")["input_ids"]
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        prefix_len = len(with_specials) - len(plain)
        ok = prefix_len > 0 and with_specials[prefix_len:] == plain
        self.prefix_ids: list[int] = list(with_specials[:prefix_len]) if ok else []
        self._renderer: chat_format.TokenizerRenderer | None = None

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt: str) -> list[int]:
        """The tokens a prompt/completion prompt is fed as, at training and at inference."""
        return self.prefix_ids + self.encode(prompt)

    def example(self, row: dict[str, Any], where: str) -> Example:
        if "messages" in row:
            return self._chat(row, where)
        if "prompt" in row and "completion" in row:
            return self._prompt_completion(row["prompt"], row["completion"], where)
        raise TrainingError(
            f"{where}: expected 'prompt' and 'completion' keys or a 'messages' list, "
            f"got keys {sorted(row)}"
        )

    def _prompt_completion(self, prompt: Any, completion: Any, where: str) -> Example:
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise TrainingError(f"{where}: 'prompt' and 'completion' must be strings")
        prompt_ids = self.prompt_ids(prompt)
        # Tokenized separately, as at inference time, where the prompt arrives alone.
        completion_ids = self.encode(completion) + [self.eos_id]
        n_prompt = len(prompt_ids)
        weights = [self.prompt_loss_weight] * n_prompt + [1.0] * len(completion_ids)
        target = [False] * n_prompt + [True] * len(completion_ids)
        weights[0] = 0.0
        return Example(prompt_ids + completion_ids, weights, target, n_prompt, completion)

    @property
    def renderer(self) -> chat_format.TokenizerRenderer:
        if self._renderer is None:
            self._renderer = chat_format.TokenizerRenderer(self.tokenizer)
        return self._renderer

    def _chat(self, row: dict[str, Any], where: str) -> Example:
        try:
            conversation = chat_format.normalise_example(row)
        except chat_format.ChatFormatError as exc:
            raise TrainingError(f"{where}: {exc.error.message}") from None
        return self.conversation(conversation, where)

    def preference(self, row: dict[str, Any], where: str) -> Pair:
        """A preference line (DPO) as two examples: the same rendered conversation ending in
        the preferred or the non-preferred output, each weighted on its output's tokens only."""
        try:
            pair = chat_format.normalise_preference(row)
        except chat_format.ChatFormatError as exc:
            raise TrainingError(f"{where}: {exc.error.message}") from None
        return Pair(
            self.conversation(pair.preferred, where), self.conversation(pair.non_preferred, where)
        )

    def conversation(self, conversation: chat_format.Conversation, where: str) -> Example:
        """A chat conversation as `apply_chat_template` renders it (with its tools), loss on the
        assistant turns that are trained (weight 1).

        No BOS is added: the template writes one if the model wants it, and serving
        (`engine.generation.chat_prompt`) tokenizes its prompt the same way, so a prompt is the
        same tokens at training and at inference.
        """
        if not getattr(self.tokenizer, "chat_template", None):
            raise TrainingError("This base model has no chat template; use prompt/completion data")
        try:
            rendered = chat_format.render_chat(self.renderer, conversation)
        except chat_format.TemplateError as exc:
            raise TrainingError(f"{where}: {exc}") from None
        ids, offsets = self._encode_with_offsets(rendered.text, rendered.spans)
        weights = [0.0] * len(ids)
        target = [False] * len(ids)
        spans = rendered.spans
        k = 0
        prompt_len = len(ids)
        last_start = spans[-1][0] if spans else len(rendered.text)
        for i, (start, end) in enumerate(offsets):
            # A token belongs to a turn if it overlaps it (a token straddling the turn's start
            # is what the model writes first), as transformers' assistant masks count it.
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if prompt_len == len(ids) and end > last_start:
                prompt_len = i
            if k < len(spans) and end > spans[k][0] and start < spans[k][1]:
                weights[i] = 1.0 if spans[k][2] else 0.0
                target[i] = spans[k][2]
        if ids:
            weights[0] = 0.0
        return Example(ids, weights, target, prompt_len, rendered.last_reply)

    def _encode_with_offsets(
        self, text: str, spans: list[tuple[int, int, bool]]
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of the whole text, and each token's character span in it."""
        try:
            encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
        except (NotImplementedError, ValueError, KeyError):
            pass
        # A tokenizer without offsets (a slow, Python one): encode piece by piece, cut at the
        # turns' edges, and give each token its piece's span.
        cuts = sorted({0, len(text), *(p for s in spans for p in s[:2])})
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for a, b in zip(cuts, cuts[1:], strict=False):
            piece = self.encode(text[a:b])
            ids += piece
            offsets += [(a, b)] * len(piece)
        return ids, offsets


# Completions with at most this many distinct values (each seen at least twice on average) are
# class labels: a subset then keeps every label's share, so ¼ of a 13%-spam set is still 13% spam.
STRATIFY_MAX_LABELS = 50


def _label(row: dict[str, Any]) -> str | None:
    if isinstance(row.get("completion"), str):
        return str(row["completion"]).strip()
    messages = row.get("messages")
    if isinstance(messages, list):
        replies = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
        if replies and isinstance(replies[-1].get("content"), str):
            return str(replies[-1]["content"]).strip()
    return None


def subset_rows(rows: list[dict[str, Any]], fraction: float, seed: int) -> list[dict[str, Any]]:
    """A deterministic subset of `subset_size(len(rows), fraction)` rows under `seed`, in file
    order; stratified by completion when the completions look like class labels.

    Rows are taken from the front of one seeded order (per label when stratified), so the ¼
    subset sits inside the ½ one, up to the rounding of each label's share.
    """
    k = subset_size(len(rows), fraction)
    if k >= len(rows):
        return rows
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    labels = [_label(row) for row in rows]
    distinct = set(labels)
    if None in distinct or len(distinct) > STRATIFY_MAX_LABELS or 2 * len(distinct) > len(rows):
        chosen = order[:k]
    else:
        groups: dict[str | None, list[int]] = {}
        for i in order:
            groups.setdefault(labels[i], []).append(i)
        share = {label: len(group) * k / len(rows) for label, group in groups.items()}
        take = {label: int(s) for label, s in share.items()}
        # Largest remainders first, so the counts add up to exactly k.
        by_remainder = sorted(groups, key=lambda label: (take[label] - share[label], str(label)))
        for label in by_remainder[: k - sum(take.values())]:
            take[label] += 1
        chosen = [i for label, group in groups.items() for i in group[: take[label]]]
    return [rows[i] for i in sorted(chosen)]


def _truncated(example: Example, max_length: int) -> Example:
    return Example(
        example.input_ids[:max_length],
        example.weights[:max_length],
        example.target[:max_length],
        min(example.prompt_len, max_length),
        example.completion,
    )


def _selected_rows(
    path: str | Path, limit: int | None, fraction: float, seed: int
) -> list[dict[str, Any]]:
    """The file's rows, the first `limit` of them, then a seeded `fraction` (`subset_rows`)."""
    rows = read_jsonl(path)
    if limit is not None:
        rows = rows[:limit]
    if fraction < 1:
        rows = subset_rows(rows, fraction, seed)
    return rows


def load_pairs(
    path: str | Path,
    tokenizing: Tokenizing,
    max_length: int,
    too_long: TooLongPolicy,
    limit: int | None = None,
    fraction: float = 1.0,
    seed: int = 0,
) -> tuple[list[Pair], DataStats]:
    """Read and tokenize a preference file (DPO), applying the too-long policy to each output's
    sequence: "drop" leaves out a pair either of whose sequences is too long; "truncate" cuts
    both (a pair whose outputs are cut away entirely is dropped: nothing to compare)."""
    rows = _selected_rows(path, limit, fraction, seed)
    stats = DataStats()
    pairs: list[Pair] = []
    name = Path(path).name
    for number, row in enumerate(rows, start=1):
        pair = tokenizing.preference(row, f"Line {number} of {name}")
        if len(pair.preferred) > max_length or len(pair.non_preferred) > max_length:
            if too_long == "drop":
                stats.n_dropped += 1
                continue
            stats.n_truncated += 1
            pair = Pair(
                _truncated(pair.preferred, max_length), _truncated(pair.non_preferred, max_length)
            )
            if not any(pair.preferred.weights[1:]) or not any(pair.non_preferred.weights[1:]):
                stats.n_truncated -= 1
                stats.n_dropped += 1
                continue
        pairs.append(pair)
        stats.n_tokens += len(pair)
        stats.max_length = max(stats.max_length, len(pair.preferred), len(pair.non_preferred))
    stats.n_examples = len(pairs)
    if not pairs:
        raise TrainingError(f"No preference pair of {name} fits in {max_length} tokens")
    return pairs, stats


def load_examples(
    path: str | Path,
    tokenizing: Tokenizing,
    max_length: int,
    too_long: TooLongPolicy,
    limit: int | None = None,
    fraction: float = 1.0,
    seed: int = 0,
) -> tuple[list[Example], DataStats]:
    """Read and tokenize a JSONL file, applying the too-long policy.

    "truncate" keeps the first `max_length` tokens (as Hugging Face truncation does); "drop"
    leaves the example out. Either way the count is in the returned stats. `fraction` < 1 keeps
    only a seeded subset of the rows (see `subset_rows`).
    """
    rows = _selected_rows(path, limit, fraction, seed)
    stats = DataStats()
    examples: list[Example] = []
    name = Path(path).name
    for number, row in enumerate(rows, start=1):
        example = tokenizing.example(row, f"Line {number} of {name}")
        if len(example) > max_length:
            if too_long == "drop":
                stats.n_dropped += 1
                continue
            stats.n_truncated += 1
            example = _truncated(example, max_length)
        examples.append(example)
        stats.n_tokens += len(example)
        stats.max_length = max(stats.max_length, len(example))
    stats.n_examples = len(examples)
    if not examples:
        raise TrainingError(f"No example of {name} fits in {max_length} tokens")
    return examples, stats


@dataclass
class Pack:
    """Several examples in one row, and where their loss-bearing predictions are."""

    input_ids: torch.Tensor  # [1, L]
    position_ids: torch.Tensor  # [1, L], restarting at 0 for each example
    seq_lens: list[int]  # example lengths, in row order (a trailing filler segment included)
    # One entry per prediction that carries loss (weight > 0):
    source: torch.Tensor  # row position whose hidden state predicts...
    labels: torch.Tensor  # ...this token id,
    weights: torch.Tensor  # with this loss weight;
    target: torch.Tensor  # bool: counts towards token/sequence accuracy
    example: torch.Tensor  # index (within the pack) of the example it belongs to
    n_examples: int
    n_tokens: int  # real tokens, filler excluded


def padded_length(n_tokens: int, bucket: int) -> int:
    """`n_tokens` rounded up to a multiple of `bucket`, or of a sixteenth of the power of two at
    or above it where that is larger: long rows take 8 shapes per doubling of the length, and
    less than an eighth of any row longer than 8 * `bucket` is filler (a fixed multiple of 64
    padded the 245-token rows of a batch of 8 short examples by 13%)."""
    if bucket <= 1:
        return n_tokens
    step = max(bucket, (1 << (n_tokens - 1).bit_length()) // 16)
    return -(-n_tokens // step) * step


def _pack_rows(examples: Sequence[Example], bucket: int, filler_id: int) -> Pack:
    ids: list[int] = []
    positions: list[int] = []
    source: list[int] = []
    labels: list[int] = []
    weights: list[float] = []
    target: list[bool] = []
    owner: list[int] = []
    seq_lens: list[int] = []
    for index, example in enumerate(examples):
        offset = len(ids)
        ids += example.input_ids
        positions += range(len(example))
        seq_lens.append(len(example))
        for i in range(1, len(example)):
            if example.weights[i] > 0:
                source.append(offset + i - 1)
                labels.append(example.input_ids[i])
                weights.append(example.weights[i])
                target.append(example.target[i])
                owner.append(index)
    n_tokens = len(ids)
    extra = padded_length(n_tokens, bucket) - n_tokens
    if extra:
        # Round the row up with a filler segment that is attended only by itself and carries no
        # loss. Few distinct shapes keep allocator caches and kernel choices from piling up
        # (see the RSS note in trainer.py).
        ids += [filler_id] * extra
        positions += range(extra)
        seq_lens.append(extra)
    return Pack(
        input_ids=torch.tensor([ids], dtype=torch.long),
        position_ids=torch.tensor([positions], dtype=torch.long),
        seq_lens=seq_lens,
        source=torch.tensor(source, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        weights=torch.tensor(weights, dtype=torch.float32),
        target=torch.tensor(target, dtype=torch.bool),
        example=torch.tensor(owner, dtype=torch.long),
        n_examples=len(examples),
        n_tokens=n_tokens,
    )


def make_packs(
    examples: Sequence[Example], max_tokens: int, bucket: int = 1, filler_id: int = 0
) -> Iterator[Pack]:
    """Split `examples` into packs of at most `max_tokens` tokens (one example longer than that
    gets a pack of its own), in order, so the result depends only on the input."""
    group: list[Example] = []
    size = 0
    for example in examples:
        if group and size + len(example) > max_tokens:
            yield _pack_rows(group, bucket, filler_id)
            group, size = [], 0
        group.append(example)
        size += len(example)
    if group:
        yield _pack_rows(group, bucket, filler_id)


def make_pair_packs(
    pairs: Sequence[Pair], max_tokens: int, bucket: int = 1, filler_id: int = 0
) -> Iterator[tuple[Pack, list[Pair]]]:
    """Packs of whole pairs (each pack's examples are preferred, non-preferred, preferred, …),
    so that a pair's DPO loss, which needs both its log-probabilities, is complete in one pack
    and can be backpropagated pack by pack. A pair longer than `max_tokens` gets its own."""
    group: list[Pair] = []
    size = 0
    for pair in pairs:
        if group and size + len(pair) > max_tokens:
            yield _pack_pairs(group, bucket, filler_id), group
            group, size = [], 0
        group.append(pair)
        size += len(pair)
    if group:
        yield _pack_pairs(group, bucket, filler_id), group


def _pack_pairs(pairs: Sequence[Pair], bucket: int, filler_id: int) -> Pack:
    examples = [e for p in pairs for e in (p.preferred, p.non_preferred)]
    return _pack_rows(examples, bucket, filler_id)


def prompt_pack(
    prompts: Sequence[list[int]], max_tokens: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]]:
    """Pack prompts for scoring their next token: yields (input_ids, position_ids, seq_lens,
    last_positions)."""
    group: list[list[int]] = []
    size = 0

    def emit() -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor]:
        ids = [t for p in group for t in p]
        positions = [i for p in group for i in range(len(p))]
        lens = [len(p) for p in group]
        ends = torch.tensor(lens).cumsum(0) - 1
        return (
            torch.tensor([ids], dtype=torch.long),
            torch.tensor([positions], dtype=torch.long),
            lens,
            ends,
        )

    for prompt in prompts:
        if group and size + len(prompt) > max_tokens:
            yield emit()
            group, size = [], 0
        group.append(prompt)
        size += len(prompt)
    if group:
        yield emit()
