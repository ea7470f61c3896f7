"""Token counting: exact against the Rust tokenizer on every path (chunk sums, word split,
caches, Rust)."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest
from tokenizers import Tokenizer, normalizers

from datasets import tokens
from datasets.tokens import TokenCounter


def rust_counts(counter: TokenCounter, texts: list[str]) -> list[int]:
    encoded = counter.tokenizer.encode_batch(texts, add_special_tokens=False)
    return [len(e.ids) for e in encoded]


def fuzz_texts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        *string.ascii_letters,
        *string.digits,
        *string.punctuation,
        " ",
        "  ",
        "\n",
        "\t",
        "\r\n",
        "'s",
        "'ll",
        "n't",
        "<|im_end|>",
        "<|im_start|>",
        "é",
        "日本",
        "🙂",
        "\u00a0",
        "\x1c",
        " the",
        " 2024",
    ]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def test_the_default_tokenizer_counts_by_words(token_counter: TokenCounter) -> None:
    # The fast path is what makes counting every token of a million rows affordable.
    assert token_counter.splits_words


def test_counts_match_the_rust_tokenizer_exactly(token_counter: TokenCounter) -> None:
    texts = fuzz_texts(3000) + ["", " ", "Hello, world!", "I'm here\n\nReally?"]
    fresh = TokenCounter(token_counter.tokenizer, name="fresh", context_length=2048, threads=2)

    assert fresh.count_many(texts) == rust_counts(token_counter, texts)
    assert fresh.count_many(texts, split=False) == rust_counts(token_counter, texts)


def test_counts_stay_exact_when_the_word_cache_starts_over(
    token_counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "WORD_CACHE_ENTRIES", 50)
    fresh = TokenCounter(token_counter.tokenizer, name="fresh", context_length=2048)
    texts = [f"row {i} says {i * 7919} things" for i in range(2000)]

    counts = [n for i in range(0, 2000, 100) for n in fresh.count_many(texts[i : i + 100])]

    assert counts == rust_counts(token_counter, texts)
    assert len(fresh._words) <= 50 + 400


def sentences(n: int, seed: int = 11) -> list[str]:
    """Text as datasets hold it: words, numbers and punctuation between spaces, with the white
    space around chunks varied (runs, newlines, tabs, edges) and the odd special token."""
    rng = random.Random(seed)
    words = ["the", "The", "cat's", "don't", "2024", "3.14", "e-mail", "(ok)", "...", "I'm"]
    words += ["naïve", "日本語", "🙂", "<|im_end|>", "x<|im_start|>y", "'s", "a'", "##", ""]
    words += ["\x00nul", "\uffff", "\x1cfs"]  # control characters (the cache's own marker)
    gaps = [" "] * 12 + ["  ", "   ", "\n", " \n", "\n ", "\n\n", "\t", " \t ", "\u00a0", "\r\n "]
    edges = ["", "", "", " ", "  ", "\n", " \n", "\n\n###\n\n", " ->"]
    out = []
    for _ in range(n):
        body = rng.choice(words)
        for _ in range(rng.randint(0, 12)):
            body += rng.choice(gaps) + rng.choice(words)
        out.append(rng.choice(edges[:4]) + body + rng.choice(edges))
    return out


def test_chunk_sums_match_the_rust_tokenizer_exactly(token_counter: TokenCounter) -> None:
    texts = sentences(4000)
    fresh = TokenCounter(token_counter.tokenizer, name="fresh", context_length=2048)

    first = fresh.count_many(texts)  # chunks are counted and cached
    fresh._cache.clear()
    again = fresh.count_many(texts)  # now mostly summed from cached chunks

    assert first == again == rust_counts(token_counter, texts)


def test_most_text_is_summed_from_chunks(
    token_counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fast path must take ordinary prompts (single spaces, a separator at the end) and
    # leave the long way to the few texts it can't split.
    fresh = TokenCounter(token_counter.tokenizer, name="fresh", context_length=2048)
    texts = [f"#{i} Is this message {i % 7} spam or not?\n\n###\n\n" for i in range(500)]
    texts += ["two  spaces here", "three   spaces", "ends  ", "tab\t here", "a <|im_end|> b"]
    long_way: list[str] = []
    by_pieces = fresh._count_by_pieces

    def spy(batch: list[str], **options: Any) -> list[int]:
        long_way.extend(batch)
        return by_pieces(batch, **options)

    monkeypatch.setattr(fresh, "_count_by_pieces", spy)

    assert fresh.count_many(texts, split=False) == rust_counts(token_counter, texts)
    whole = [t for t in long_way if t in texts]
    assert sorted(whole) == sorted(["three   spaces", "ends  ", "a <|im_end|> b"])


def test_counts_stay_exact_when_the_chunk_cache_turns_over(
    token_counter: TokenCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "CHUNK_CACHE_ENTRIES", 40)
    fresh = TokenCounter(token_counter.tokenizer, name="fresh", context_length=2048)
    texts = [f"row {i} says {i * 7919} things\nand more" for i in range(2000)]

    counts = [n for i in range(0, 2000, 100) for n in fresh.count_many(texts[i : i + 100])]

    assert counts == rust_counts(token_counter, texts)
    assert len(fresh._chunks) <= 40 + 300
    assert fresh._chunks_old  # it did turn over


def test_non_ascii_characters_are_checked_once_then_counted_by_words(
    token_counter: TokenCounter,
) -> None:
    fresh = TokenCounter(token_counter.tokenizer, name="fresh", context_length=2048)
    texts = ["Café crème, naïve façade… “quoted” ☕🙂", "Ünïcödé ½ € ±"]

    counts = fresh.count_many(texts)

    assert counts == rust_counts(token_counter, texts)
    assert {"é", "…", "“", "🙂", "€"} <= fresh._safe_chars


def test_tokenizers_the_word_split_would_get_wrong_use_rust(token_counter: TokenCounter) -> None:
    # A normalizer can change text across word boundaries: no shortcut then.
    lowercasing = Tokenizer.from_str(token_counter.tokenizer.to_str())
    lowercasing.normalizer = normalizers.Lowercase()
    counter = TokenCounter(lowercasing, name="lower", context_length=2048)
    texts = fuzz_texts(300, seed=3)

    assert not counter.splits_words
    expected = [len(e.ids) for e in lowercasing.encode_batch(texts, add_special_tokens=False)]
    assert counter.count_many(texts) == expected


def test_chat_overheads_come_from_the_template(token_counter: TokenCounter) -> None:
    # ChatML: "<|im_start|>{role}\n" + "<|im_end|>\n"; SmolLM2 adds a system prompt if absent.
    assert token_counter.message_overhead["user"] == 5
    assert token_counter.conversation_overhead > 10


def test_a_missing_template_falls_back_to_an_estimate(token_counter: Any) -> None:
    counter = TokenCounter(token_counter.tokenizer, name="x", context_length=10, chat_template=None)

    assert counter.message_overhead["assistant"] == tokens.FALLBACK_MESSAGE_OVERHEAD
    assert counter.conversation_overhead == 0
