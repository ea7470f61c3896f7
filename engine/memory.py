"""A training memory estimate for the create form's pre-flight line, from a model's config.json
alone (nothing is loaded): weights, what training adds to them (LoRA: almost nothing; full:
gradients and Adam's two moments), and the activations of one batch.

It is an estimate, in the spirit of "about": float32 weights (the CPU default), no activation
checkpointing, and the attention scores of eager attention, which dominate long sequences."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.models import PACKAGE_PREFIX, _gguf_cache_key, _package_gguf, default_cache_dir
from engine.spec import TrainingError

BYTES = 4  # float32


@dataclass(frozen=True)
class MemoryEstimate:
    parameters: int
    weights_bytes: int
    peak_bytes: int


def local_config(source: str, cache_dir: str | None = None) -> dict[str, Any] | None:
    """The config.json of a model source when it is already on disk (a model directory, or a
    GGUF dequantized into the cache before); None rather than doing any heavy work."""
    path = Path(source).expanduser()
    candidates = [path / "config.json"]
    try:
        if source.startswith(PACKAGE_PREFIX):
            gguf = _package_gguf(source[len(PACKAGE_PREFIX) :])
        elif path.is_file() and path.suffix == ".gguf":
            gguf = path
        else:
            gguf = None
    except TrainingError:
        return None
    if gguf is not None:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        candidates = [cache / _gguf_cache_key(gguf) / "config.json"]
    for candidate in candidates:
        if candidate.is_file():
            config: dict[str, Any] = json.loads(candidate.read_text())
            return config
    return None


def parameter_count(config: dict[str, Any]) -> int:
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config.get("num_attention_heads", 1))
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inter = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size", 0))
    attention = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings", True) else 2)
    return layers * (attention + mlp + 2 * hidden) + embeddings


def estimate(
    config: dict[str, Any], *, method: str, batch_size: int, sequence_tokens: int
) -> MemoryEstimate:
    params = parameter_count(config)
    weights = params * BYTES
    # Full fine-tuning keeps a gradient and Adam's two moments per weight; LoRA's adapters and
    # their optimizer state are well under 1% of the weights.
    training_state = 3 * weights if method == "full" else weights // 100
    hidden = int(config["hidden_size"])
    layers = int(config["num_hidden_layers"])
    heads = int(config.get("num_attention_heads", 1))
    inter = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config.get("vocab_size", 0))
    tokens = batch_size * max(sequence_tokens, 1)
    # Per layer and token: the residual stream and attention projections (~10 hidden-sized
    # tensors), the MLP's 3 intermediate-sized ones, and one row of attention scores per head.
    per_layer = tokens * (10 * hidden + 3 * inter + 2 * heads * sequence_tokens) * BYTES
    logits = tokens * vocab * BYTES * 2  # logits and their softmax for the loss
    peak = weights + training_state + layers * per_layer + logits
    return MemoryEstimate(parameters=params, weights_bytes=weights, peak_bytes=peak)
