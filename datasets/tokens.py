"""Token counting for dataset statistics, with the default base model's tokenizer.

The counter wraps the model's *fast* tokenizer: the Rust `tokenizers.Tokenizer` that
`transformers.AutoTokenizer` itself wraps. When the model directory has a `tokenizer.json` we
load that file straight into `tokenizers`, because importing transformers pulls in torch: about
4 s and 250 MB of RSS that a validation worker would pay for nothing (see
docs/benchmarks/prepare_data.md). Only a directory without `tokenizer.json` goes through
AutoTokenizer.

The counter is a lazily loaded process-level singleton: a Celery worker loads it on its first
validation and keeps it. `encode_batch` releases the GIL, so `count_many` spreads big batches over
threads and the cores work in parallel even with TOKENIZERS_PARALLELISM=false.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Used when neither the registry nor the model's config says how long a sequence may be.
FALLBACK_CONTEXT_LENGTH = 2048
# Per-message template overhead when the tokenizer has no usable chat template.
FALLBACK_MESSAGE_OVERHEAD = 4
# Strings up to this many characters are remembered with their count: labels and other short
# repeated strings (classification completions, system prompts) are then tokenized only once.
CACHE_MAX_CHARS = 512
CACHE_MAX_ENTRIES = 50_000
CHAT_ROLES = ("system", "user", "assistant", "tool", "function")
# The Rust BPE model caches the merges of each word it has seen, 10,000 words by default, and
# stops caching once full. Real datasets have more distinct words than that (every number is
# one), so the default cache fills early and later text is merged from scratch. A bigger cache
# saves tokenizing CPU, but each entry costs ~450 bytes (200k words measured 92 MB), so the
# size is a compromise with the 300 MB budget of a million-row validation.
BPE_CACHE_WORDS = 50_000


class TokenCounter:
    """Counts tokens of strings (no special tokens added) and chat-template overhead."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        name: str,
        context_length: int,
        chat_template: str | None = None,
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
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.message_overhead, self.conversation_overhead = _template_overheads(self, chat_template)

    def _encode_lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(e) for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def count(self, text: str) -> int:
        return self.count_many([text])[0]

    def count_many(self, texts: Sequence[str], *, split: bool = True) -> list[int]:
        """Token counts of `texts`, in order. Repeated short strings are tokenized once.

        With split=False the batch is encoded on the calling thread: for callers that already
        run batches on `pool()` (a pool thread waiting on its own pool could deadlock).
        """
        cache = self._cache
        missing = list({t: None for t in texts if t not in cache})
        if missing:
            lengths = self._encode_parallel(missing) if split else self._encode_lengths(missing)
            if len(cache) < CACHE_MAX_ENTRIES:
                for text, n in zip(missing, lengths, strict=True):
                    if len(text) <= CACHE_MAX_CHARS:
                        cache[text] = n
            found = dict(zip(missing, lengths, strict=True))
            return [cache[t] if t in cache else found[t] for t in texts]
        return [cache[t] for t in texts]

    def _encode_parallel(self, texts: list[str]) -> list[int]:
        # Small batches aren't worth a thread hop; big ones are split across the pool's threads.
        if self.threads == 1 or len(texts) < 256:
            return self._encode_lengths(texts)
        step = -(-len(texts) // self.threads)
        parts = [texts[i : i + step] for i in range(0, len(texts), step)]
        results: list[int] = []
        for lengths in self.pool().map(self._encode_lengths, parts):
            results.extend(lengths)
        return results

    def pool(self) -> ThreadPoolExecutor:
        """Threads shared by every caller in this process (validation pipelines use it too)."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tokens")
            return self._pool


def _template_overheads(counter: TokenCounter, template: str | None) -> tuple[dict[str, int], int]:
    """Tokens a chat template adds per message (by role) and once per conversation.

    Measured by rendering probe conversations and subtracting the content tokens, so that row
    totals match what the trainer will see without rendering a template per row. The
    conversation overhead covers templates that inject a default system prompt (SmolLM2 does)
    when the conversation doesn't start with one.
    """
    fallback = dict.fromkeys(CHAT_ROLES, FALLBACK_MESSAGE_OVERHEAD)
    if not template:
        return fallback, 0
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise ValueError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        compiled = env.from_string(template)

        def tokens(messages: list[dict[str, str]]) -> int:
            text = compiled.render(
                messages=messages, add_generation_prompt=False, raise_exception=raise_exception
            )
            return counter._encode_lengths([text])[0]

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
        threads=threads,
    )


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
