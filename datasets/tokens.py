"""Token counting for dataset statistics, with the default base model's tokenizer.

The counter wraps the model's *fast* tokenizer: the Rust `tokenizers.Tokenizer` that
`transformers.AutoTokenizer` itself wraps. When the model directory has a `tokenizer.json` we
load that file straight into `tokenizers`, because importing transformers pulls in torch: about
4 s and 250 MB of RSS that a validation worker would pay for nothing (see
docs/benchmarks/prepare_data.md). Only a directory without `tokenizer.json` goes through
AutoTokenizer.

Counts are exact, and cheap enough to count every token of a million rows:
* Repeated short strings (labels, system prompts) are counted once (`_cache`).
* For byte-level BPE tokenizers (GPT-2 style, as the default model's is) a text's count is the
  sum of its pre-tokenized words' counts: BPE never merges across the pre-tokenizer's splits.
  So we split in Python, with GPT-2's pattern (`re` for ASCII text, where its Unicode classes
  are spelled out; `regex` beyond ASCII), and run the BPE model once per distinct word. The
  Rust pre-tokenizer's Oniguruma regex is ~85% of Rust's encode time, and this path costs
  about a third of Rust's CPU. It is used only for tokenizers whose structure makes it exact,
  after a self-check against Rust, and non-ASCII characters are each checked against Rust the
  first time they occur (the two regex engines' Unicode tables could disagree).
* On top of that, a text is counted as the sum of its space-separated chunks, each counted on
  its own and cached: "a b\\n" → "a" + " b\\n". That is exact because GPT-2's pattern
  begins a word at a space whenever the character before the space, or the one after it, is
  not white space: a word holds white space only at its start (` ?\\p{L}+`) or is all white
  space, and a run of white space followed by a word is cut before its last character.
  The exception, a space with white space before it and white space (or the end of the
  text) after it, is looked for with substring tests (confirmed by a small regex); texts
  holding one, non-ASCII texts with white space other than " " and "\\n", and texts holding
  special tokens skip this layer. Chunks repeat far more than whole texts do, and
  `str.split` plus a dict lookup per chunk, done in C over a whole batch (`map`, then prefix
  sums), costs a small fraction of splitting with the regex; only unseen chunks take the
  word path.
* Everything else (text holding a special token, characters that failed their check, other
  tokenizers) is encoded by Rust, whose `encode_batch` releases the GIL.

The counter is a lazily loaded process-level singleton: a Celery worker loads it on its first
validation and keeps it.
"""

from __future__ import annotations

import json
import logging
import random
import re
import string
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate, compress, repeat
from operator import is_, sub
from pathlib import Path
from typing import Any

import regex
from django.conf import settings

from engine import chat_format

logger = logging.getLogger(__name__)

# Used when neither the registry nor the model's config says how long a sequence may be.
FALLBACK_CONTEXT_LENGTH = 2048
# Per-message template overhead when the tokenizer has no usable chat template.
FALLBACK_MESSAGE_OVERHEAD = 4
# Strings up to this many characters are remembered with their count: labels and other short
# repeated strings (classification completions, system prompts) are then tokenized only once.
CACHE_MAX_CHARS = 512
CACHE_MAX_ENTRIES = 50_000
# Distinct words remembered by the word-split path (~100 bytes each).
WORD_CACHE_ENTRIES = 100_000
# Space-separated chunks remembered by the chunk path, per generation (two are kept).
CHUNK_CACHE_ENTRIES = 100_000
# Chunk-cache keys: a text's first chunk is stored with this prefix (it has no space before it);
# the others are stored without the space that precedes them. A non-printable, non-ASCII
# character: no text that takes the chunk path can hold it.
HEAD = "\uffff"
CHAT_ROLES = chat_format.ROLES
# The Rust BPE model caches the merges of each word it has seen, 10,000 words by default, and
# stops caching once full. Real datasets have more distinct words than that (every number is
# one), so the default cache fills early and later text is merged from scratch. A bigger cache
# saves tokenizing CPU, but each entry costs ~450 bytes (200k words measured 92 MB), so the
# size is a compromise with the 300 MB budget of a million-row validation.
BPE_CACHE_WORDS = 50_000

# GPT-2's pre-tokenizer pattern (tokenizers' ByteLevel with use_regex=True) for ASCII text:
# \p{L} is [A-Za-z], \p{N} is [0-9] and \s is the six ASCII white-space characters (Python's
# own \s would also match \x1c-\x1f, Oniguruma's doesn't).
_WS = " \t\n\x0b\x0c\r"
GPT2_ASCII_SPLIT = re.compile(
    rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+"
    rf"|[{_WS}]+(?![^{_WS}])|[{_WS}]+"
)

# A space with white space before it and white space (or the end) after it: GPT-2 doesn't begin
# a word there, so a text holding one can't be cut at its spaces (ASCII white space only).
SPACE_IN_A_RUN = re.compile(rf"[{_WS}] (?:[{_WS}]|\Z)")

# The same pattern with its real Unicode classes, for text beyond ASCII (`regex` knows \p{L}).
GPT2_SPLIT = regex.compile(
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
)


def _byte_level_all() -> list[str]:
    """GPT-2's byte-to-character map for all 256 bytes (tokenizers' ByteLevel)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, shifted = [""] * 256, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_LEVEL = _byte_level_all()
# The ASCII half as a str.translate table: the common case, with no UTF-8 encoding needed.
BYTE_LEVEL_ASCII = dict(enumerate(BYTE_LEVEL[:128]))


def byte_level(word: str) -> str:
    """`word` as the BPE model sees it after ByteLevel: each UTF-8 byte as one character."""
    if word.isascii():
        return word.translate(BYTE_LEVEL_ASCII)
    return "".join([BYTE_LEVEL[b] for b in word.encode("utf-8")])


def _probe_texts() -> list[str]:
    """ASCII strings that exercise every branch of the split pattern, for the self-check."""
    rng = random.Random(1234)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " \t\n\r\x0b\x0c'"
    alphabet += "\x00\x1c\x1f"
    texts = ["".join(rng.choices(alphabet, k=rng.randint(0, 40))) for _ in range(400)]
    texts += ["don't", "It's   ok", "  \n\n  x", "'s's", "we'll'", "I'M", "a  b\t\tc\n", " 123abc"]
    # Printable text, for the chunk path: single spaces, edges, and the same chunks again.
    printable = string.ascii_letters + string.digits + string.punctuation + "    '"
    texts += ["".join(rng.choices(printable, k=rng.randint(0, 40))) for _ in range(400)]
    texts += ["a b", " a", "a ", "a  b", " 's 't", "x 's", "1 2 3", "!! ?? ..", "I 'm", "a b"]
    return texts


class TokenCounter:
    """Counts tokens of strings (no special tokens added) and chat-template overhead."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str,
        context_length: int,
        chat_template: str | None = None,
        special_tokens: dict[str, str] | None = None,
        threads: int = 2,
    ) -> None:
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        resize = getattr(tokenizer.model, "_resize_cache", None)  # BPE models only
        if resize is not None:
            resize(BPE_CACHE_WORDS)
        self.name = name
        self.context_length = context_length
        self.threads = max(1, threads)
        self._cache: dict[str, int] = {}
        self._words: dict[str, int] = {}
        # Two generations of chunk counts: when the young one is full it becomes the old one,
        # so chunks still in use survive (they are promoted back on their next miss).
        self._chunks: dict[str, int] = {HEAD: 0}
        self._chunks_old: dict[str, int] = {}
        self._split = _word_splitter(tokenizer)
        self._special = _special_tokens_pattern(tokenizer)
        # A character every special token holds ("<" for ChatML's), if there is one: a text
        # without it needs no regex search.
        contents = [t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content]
        shared = set.intersection(*map(set, contents)) if contents else set()
        self._special_hint = min(shared) if shared else None
        # A special token with a space in it could span two chunks: no chunk path then.
        self._by_chunks = self._split is not None and not any(
            " " in t.content or not t.content.isprintable()
            for t in tokenizer.get_added_tokens_decoder().values()
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        # Non-ASCII characters checked so far (see `_check_characters`); ASCII is safe by design.
        self._safe_chars: set[str] = {chr(c) for c in range(128)}
        self._unsafe_chars: set[str] = set()
        if self._split is not None:
            probe = _probe_texts()
            if self._count_uncached(probe) != self._encode_lengths(probe):
                logger.warning("Word-split token counting disagrees with %s; not using it", name)
                self._split = None
                self._by_chunks = False
        self._chat_template = chat_template
        self._special_tokens = special_tokens or {}
        self._renderer: chat_format.JinjaRenderer | None | bool = False  # False: not built yet
        self._overheads: tuple[dict[str, int], int] | None = None

    @property
    def chat_renderer(self) -> chat_format.JinjaRenderer | None:
        """The model's chat template, rendered as the trainer renders it (None: no template)."""
        if self._renderer is False:
            self._renderer = None
            if self._chat_template:
                try:
                    self._renderer = chat_format.JinjaRenderer(
                        self._chat_template, self._special_tokens
                    )
                except Exception:  # a template jinja2 can't compile: estimate instead
                    logger.warning("Could not compile the chat template", exc_info=True)
        assert self._renderer is not True
        return self._renderer

    # Measured on first use: only chat data needs them, and rendering the template costs jinja2's
    # import (a few hundredths of a second) that a prompt/completion file shouldn't pay.
    @property
    def message_overhead(self) -> dict[str, int]:
        """Tokens the chat template adds around one message, by role."""
        return self._template_overheads()[0]

    @property
    def conversation_overhead(self) -> int:
        """Tokens the chat template adds once per conversation that has no system message."""
        return self._template_overheads()[1]

    def _template_overheads(self) -> tuple[dict[str, int], int]:
        if self._overheads is None:
            self._overheads = _template_overheads(self, self.chat_renderer)
        return self._overheads

    def _check_characters(self, chars: set[str]) -> None:
        """Sort new non-ASCII characters into safe (word path) and unsafe (left to Rust).

        `regex` and Rust's Oniguruma each have their own Unicode tables (letter? digit?
        space?), which can disagree on a character now and then. Each character is checked
        the first time the data holds it, in contexts that tell its class apart (next to
        letters, digits, spaces and apostrophes); any disagreement leaves it to Rust.
        """
        candidates = sorted(chars - self._safe_chars - self._unsafe_chars)
        if not candidates:
            return
        contexts = ("a{c}b 1{c}2 '{c}s", " {c}x{c} y {c}{c}\n{c}  1")
        texts = [ctx.format(c=c) for c in candidates for ctx in contexts]
        words = self._count_by_words(list(map(GPT2_SPLIT.findall, texts)))
        rust = self._encode_lengths(texts)
        for i, c in enumerate(candidates):
            span = slice(i * len(contexts), (i + 1) * len(contexts))
            (self._safe_chars if words[span] == rust[span] else self._unsafe_chars).add(c)

    @property
    def splits_words(self) -> bool:
        """Whether the fast word-split path is in use (tests pin it for the default model)."""
        return self._split is not None

    @property
    def counts_in_python(self) -> bool:
        """Whether counting is mostly Python (the chunk path) rather than Rust, which releases
        the GIL. A second thread then only adds GIL hand-offs (measured on 100k rows: 30 to 50%
        slower in wall time, 10 to 15% more CPU), so callers count on their own thread."""
        return self._by_chunks

    def _encode_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(e) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str], *, split: bool = True) -> list[int]:
        """Token counts of `texts`, in order. Repeated short strings are counted once.

        With split=False the batch is counted on the calling thread: for callers that already
        run batches on `pool()` (a pool thread waiting on its own pool could deadlock).
        """
        cache = self._cache
        missing = list({t: None for t in texts if t not in cache})
        if missing:
            lengths = self._count_parallel(missing) if split else self._count_uncached(missing)
            if len(cache) < CACHE_MAX_ENTRIES:
                for text, n in zip(missing, lengths, strict=True):
                    if len(text) <= CACHE_MAX_CHARS:
                        cache[text] = n
            found = dict(zip(missing, lengths, strict=True))
            return [cache[t] if t in cache else found[t] for t in texts]
        return [cache[t] for t in texts]

    def _count_uncached(self, texts: Sequence[str]) -> list[int]:
        if self._split is None:
            return self._encode_lengths(texts)
        if self._by_chunks:
            return self._count_by_chunks(texts)
        return self._count_by_pieces(texts)

    def _count_by_chunks(self, texts: Sequence[str]) -> list[int]:
        """Counts as sums of cached chunk counts; unseen chunks go through `_count_by_pieces`.

        Per text, Python only tests and splits; the lookups and sums run in C over the whole
        batch at once (`map` over a flat list of chunks, then prefix sums), so that a text
        with an unseen chunk (an id, a number) costs little more than one without.
        """
        chunks = self._chunks
        flat: list[str] = []  # every chunk of every text taken, in order
        ends: list[int] = []  # where each taken text's chunks end in `flat`
        taken: list[int] = []  # the indexes of those texts
        others: list[int] = []  # texts the chunk path can't take
        extend = flat.extend
        for i, text in enumerate(texts):
            if text.isprintable():  # its only white space is " ": two substring tests suffice
                if "   " in text or text.endswith("  "):
                    others.append(i)
                    continue
            elif text.isascii() or text.replace("\n", "").isprintable():  # ASCII white space
                # Such a space needs white space before it: cheaper tests than the search first.
                if (
                    ("  " in text or "\n " in text or "\t " in text or "\r " in text)
                    or ("\x0b " in text or "\x0c " in text)
                ) and SPACE_IN_A_RUN.search(text) is not None:
                    others.append(i)
                    continue
            else:  # white space beyond ASCII (all of it is unprintable), or odd controls
                others.append(i)
                continue
            parts = text.split(" ")
            parts[0] = HEAD + parts[0]
            extend(parts)
            ends.append(len(flat))
            taken.append(i)
        found = list(map(chunks.get, flat))
        if None in found:
            unseen = set(compress(flat, map(is_, found, repeat(None))))
            special = self._learn_chunks(chunks, unseen)
            if special:
                flat, ends, taken = self._without(texts, taken, special, others)
            found = list(map(chunks.__getitem__, flat))
        prefix = list(accumulate(found, initial=0))
        starts = [0, *ends[:-1]]
        sums = list(map(sub, map(prefix.__getitem__, ends), map(prefix.__getitem__, starts)))
        if others:
            counts = [0] * len(texts)
            for i, n in zip(taken, sums, strict=True):
                counts[i] = n
            for i, n in zip(others, self._count_by_pieces([texts[i] for i in others]), strict=True):
                counts[i] = n
        else:
            counts = sums
        if len(chunks) > CHUNK_CACHE_ENTRIES:
            # Full: it becomes the old generation and a new one starts. Another thread still
            # summing with this dict keeps it whole: dicts here are only ever added to.
            self._chunks_old, self._chunks = chunks, {HEAD: 0}
        return counts

    def _learn_chunks(self, chunks: dict[str, int], unseen: set[str]) -> set[str]:
        """Add the counts of `unseen` chunks to `chunks` (from the old generation, or counted).

        Returns the chunks holding a special token, which are never cached: the tokenizer
        splits special tokens out before words, so texts holding one go the long way.
        """
        old = self._chunks_old
        chunks.update({p: old[p] for p in unseen if p in old})
        new = [p for p in unseen if p not in chunks]
        texts = [p[1:] if p.startswith(HEAD) else " " + p for p in new]
        special = {p for p, text in zip(new, texts, strict=True) if self._has_special(text)}
        if special:
            new = [p for p in new if p not in special]
            texts = [p[1:] if p.startswith(HEAD) else " " + p for p in new]
        if new:
            chunks.update(zip(new, self._count_by_pieces(texts, special_checked=True), strict=True))
        return special

    def _without(
        self, texts: Sequence[str], taken: list[int], special: set[str], others: list[int]
    ) -> tuple[list[str], list[int], list[int]]:
        """The flat chunks, ends and indexes again, leaving out (to `others`) the texts that
        hold a chunk in `special`."""
        flat: list[str] = []
        ends: list[int] = []
        kept: list[int] = []
        for i in taken:
            parts = texts[i].split(" ")
            parts[0] = HEAD + parts[0]
            if special.isdisjoint(parts):
                flat.extend(parts)
                ends.append(len(flat))
                kept.append(i)
            else:
                others.append(i)
        return flat, ends, kept

    def _has_special(self, text: str) -> bool:
        hint = self._special_hint
        if self._special is None or (hint is not None and hint not in text):
            return False
        return self._special.search(text) is not None

    def _count_by_pieces(self, texts: Sequence[str], *, special_checked: bool = False) -> list[int]:
        """Counts by GPT-2 words (see the module docstring), or by Rust where that isn't safe.

        special_checked: the caller knows no text holds a special token.
        """
        has_special = (lambda text: False) if special_checked else self._has_special
        ascii_texts: list[int] = []  # indexes of texts counted word by word, split by `re`
        unicode_texts: list[int] = []  # ... split by `regex` (checked characters only)
        by_rust: list[int] = []
        for i, text in enumerate(texts):
            if has_special(text):
                by_rust.append(i)
            elif text.isascii():
                ascii_texts.append(i)
            else:
                unicode_texts.append(i)
        if unicode_texts:
            self._check_characters(set().union(*(texts[i] for i in unicode_texts)))
            safe = self._safe_chars
            by_rust += [i for i in unicode_texts if not safe.issuperset(texts[i])]
            unicode_texts = [i for i in unicode_texts if safe.issuperset(texts[i])]
        counts = [0] * len(texts)
        for indexes, count in (
            (by_rust, self._encode_lengths),
            (ascii_texts, self._count_ascii),
            (unicode_texts, self._count_unicode),
        ):
            if indexes:
                for i, n in zip(indexes, count([texts[i] for i in indexes]), strict=True):
                    counts[i] = n
        return counts

    def _count_ascii(self, texts: list[str]) -> list[int]:
        assert self._split is not None
        return self._count_by_words(list(map(self._split.findall, texts)))

    def _count_unicode(self, texts: list[str]) -> list[int]:
        return self._count_by_words(list(map(GPT2_SPLIT.findall, texts)))

    def _count_by_words(self, pieces: list[list[str]]) -> list[int]:
        words = self._words
        missing = list({w for ws in pieces for w in ws if w not in words})
        if missing:
            # A new word is already a pre-tokenized piece: map its bytes the way ByteLevel
            # does and run the BPE model on it directly (~3 µs; a whole `encode` is ~13 µs).
            tokenize = self.tokenizer.model.tokenize
            counted = {w: len(tokenize(byte_level(w))) for w in missing}
            if len(words) + len(counted) > WORD_CACHE_ENTRIES:
                # Full: start a new cache with this batch's words rather than stop learning,
                # so one-off words (ids, numbers) can't crowd out the frequent ones for good.
                # Other threads keep the dict they started with: none of them loses a key.
                known = {w: words[w] for ws in pieces for w in ws if w in words}
                words = self._words = known | counted
            else:
                words.update(counted)
        get = words.__getitem__
        return [sum(map(get, ws)) for ws in pieces]

    def _count_parallel(self, texts: list[str]) -> list[int]:
        # Small batches aren't worth a thread hop; big ones are split across the pool's threads
        # where Rust does the work.
        if self.threads == 1 or len(texts) < 256 or self.counts_in_python:
            return self._count_uncached(texts)
        step = -(-len(texts) // self.threads)
        parts = [texts[i : i + step] for i in range(0, len(texts), step)]
        results: list[int] = []
        for lengths in self.pool().map(self._count_uncached, parts):
            results.extend(lengths)
        return results

    def pool(self) -> ThreadPoolExecutor:
        """Threads shared by every caller in this process (validation pipelines use it too)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokens")
            return self._pool


def _word_splitter(tokenizer: Any) -> re.Pattern[str] | None:
    """The ASCII word splitter, when counting word by word is exact for this tokenizer.

    That holds for a byte-level BPE with GPT-2's split and nothing before it: no normalizer
    (which could change text across word boundaries), no prefix space, no BPE dropout.
    """
    from tokenizers import models, pre_tokenizers

    pre = tokenizer.pre_tokenizer
    model = tokenizer.model
    if (
        tokenizer.normalizer is None
        and isinstance(pre, pre_tokenizers.ByteLevel)
        and pre.use_regex
        and not pre.add_prefix_space
        and isinstance(model, models.BPE)
        and not model.dropout
    ):
        return GPT2_ASCII_SPLIT
    return None


def _special_tokens_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """Matches any added token's text: the tokenizer splits those out before pre-tokenizing."""
    contents = sorted(
        {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content}, key=len
    )
    if not contents:
        return None
    return re.compile("|".join(re.escape(c) for c in reversed(contents)))


def _template_overheads(
    counter: TokenCounter, renderer: chat_format.JinjaRenderer | None
) -> tuple[dict[str, int], int]:
    """Tokens a chat template adds per message (by role) and once per conversation.

    Measured by rendering probe conversations and subtracting the content tokens, so that row
    totals match what the trainer will see without rendering a template per row. The
    conversation overhead covers templates that inject a default system prompt (SmolLM2 does)
    when the conversation doesn't start with one.
    """
    fallback = dict.fromkeys(CHAT_ROLES, FALLBACK_MESSAGE_OVERHEAD)
    if renderer is None:
        return fallback, 0
    try:

        def tokens(messages: list[dict[str, str]]) -> int:
            return counter._encode_lengths([renderer(messages, None, False)])[0]

        content = "x"
        content_tokens = counter._encode_lengths([content])[0]
        system = {"role": "system", "content": content}
        with_system = tokens([system])
        overhead = {}
        for role in CHAT_ROLES:
            message = {"role": role, "content": content}
            overhead[role] = tokens([system, message]) - with_system - content_tokens
        user_only = tokens([{"role": "user", "content": content}])
        conversation = user_only - content_tokens - overhead["user"]
        if min(overhead.values()) < 0 or conversation < 0:
            raise ValueError("template overheads came out negative")
        return overhead, conversation
    except Exception:
        # A template that needs features the probe lacks: estimate rather than fail validation.
        logger.warning("Could not measure the chat template's overhead; estimating", exc_info=True)
        return fallback, 0


def load_tokenizer(model_dir: Path) -> Any:
    """The Rust tokenizer of a Hugging Face model directory."""
    tokenizer_json = model_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tokenizer_json))
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(model_dir))
    backend = getattr(auto, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{model_dir} has no fast tokenizer; token counting needs one")
    return backend


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_context_length(model_dir: Path) -> int:
    """The model's own limit: config.json's max_position_embeddings (or the tokenizer's)."""
    config = _read_json(model_dir / "config.json")
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = config.get(key)
        if isinstance(value, int) and 0 < value <= 10_000_000:
            return value
    value = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    # Tokenizers that don't know their limit say 1e30.
    if isinstance(value, int) and 0 < value <= 10_000_000:
        return value
    return FALLBACK_CONTEXT_LENGTH


def build_counter(model_dir: Path, *, name: str, threads: int = 2) -> TokenCounter:
    tokenizer = load_tokenizer(model_dir)
    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else None
    if template is None:
        config_template = _read_json(model_dir / "tokenizer_config.json").get("chat_template")
        template = config_template if isinstance(config_template, str) else None
    return TokenCounter(
        tokenizer,
        name=name,
        context_length=model_context_length(model_dir),
        chat_template=template,
        special_tokens=special_tokens(model_dir),
        threads=threads,
    )


def special_tokens(model_dir: Path) -> dict[str, str]:
    """`bos_token`, `eos_token`… as chat templates see them (transformers passes these)."""
    config = _read_json(model_dir / "tokenizer_config.json")
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token"):
        value = config.get(key)
        if isinstance(value, dict):  # the older AddedToken form
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def default_model_dir() -> Path:
    """The default base model's Hugging Face directory (settings.TUNERY_TOKENIZER_DIR wins).

    TUNERY_TOKENIZER_DIR is a hook for tests and for deployments that keep tokenizers apart
    from weights; normally the default model source is resolved (and cached) by the engine.
    """
    override = getattr(settings, "TUNERY_TOKENIZER_DIR", None)
    if override:
        return Path(override)
    import engine

    return Path(
        engine.resolve_model_source(
            settings.TUNERY_DEFAULT_MODEL_SOURCE, cache_dir=str(settings.TUNERY_MODEL_CACHE_DIR)
        )
    )


_counter: TokenCounter | None = None
_counter_lock = threading.Lock()


def get_counter() -> TokenCounter:
    """The process-wide counter for the default base model, loaded on first use."""
    global _counter
    with _counter_lock:
        if _counter is None:
            _counter = build_counter(
                default_model_dir(),
                name=settings.TUNERY_DEFAULT_BASE_MODEL,
                threads=getattr(settings, "TUNERY_TOKENIZER_THREADS", 2),
            )
        return _counter


def reset_counter() -> None:
    """Forget the loaded counter (tests that point TUNERY_TOKENIZER_DIR elsewhere)."""
    global _counter
    with _counter_lock:
        _counter = None
