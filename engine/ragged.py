"""A per-row KV cache and the attention that reads it, for continuous batching.

Every row of a batch (one sampled sequence) keeps its own keys and values per layer, grown as
it decodes. Rows join and leave a running batch without copying anyone else's cache, and a
6,000-token conversation in the batch costs the others nothing: a padded batch cache would pad
every row to the longest one, in memory and in attention compute alike.

The model's own code runs unchanged: `RaggedCache` stands in for transformers' cache (its
`update` is what the attention layers call), and the attention implementation registered
here as "tunery_ragged" attends each row to its own keys. Outside a `ragged_forward` block
that implementation is plain SDPA, so a model switched to it still works anywhere else.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

ATTN_IMPLEMENTATION = "tunery_ragged"
_GROWTH_MIN = 32

_active = threading.local()


class RowCache:
    """One sequence's keys and values, per layer: [kv_heads, capacity, head_dim] buffers."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * num_layers
        self.values: list[torch.Tensor | None] = [None] * num_layers
        self.lengths = [0] * num_layers

    @property
    def length(self) -> int:
        return self.lengths[-1] if self.lengths else 0

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Add `key`/`value` ([kv_heads, new, head_dim]) after this layer's cached tokens."""
        new = key.shape[1]
        length = self.lengths[layer]
        buffer = self.keys[layer]
        if buffer is None or length + new > buffer.shape[1]:
            # Doubling keeps appends amortised O(1) without reserving a whole context per row.
            capacity = max(_GROWTH_MIN, 2 * (length + new))
            keys = key.new_empty(key.shape[0], capacity, key.shape[2])
            values = value.new_empty(value.shape[0], capacity, value.shape[2])
            if buffer is not None and length:
                keys[:, :length] = buffer[:, :length]
                old_values = self.values[layer]
                assert old_values is not None
                values[:, :length] = old_values[:, :length]
            self.keys[layer], self.values[layer] = keys, values
        keys_buf, values_buf = self.keys[layer], self.values[layer]
        assert keys_buf is not None and values_buf is not None
        keys_buf[:, length : length + new] = key
        values_buf[:, length : length + new] = value
        self.lengths[layer] = length + new

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.lengths[layer]
        keys, values = self.keys[layer], self.values[layer]
        assert keys is not None and values is not None
        return keys[:, :length], values[:, :length]

    def copy(self) -> RowCache:
        """An independent copy (a prompt shared by n candidates, then diverging)."""
        twin = RowCache(len(self.lengths))
        for layer, length in enumerate(self.lengths):
            keys, values = self.keys[layer], self.values[layer]
            if keys is not None and values is not None:
                twin.keys[layer] = keys[:, :length].clone()
                twin.values[layer] = values[:, :length].clone()
                twin.lengths[layer] = length
        return twin


class RaggedCache:
    """The cache handed to one forward: `rows[b]` holds batch row b's past, and
    `new_tokens[b]` says how many of the forward's positions are real for row b (the rest
    are right padding in a batched prefill; a decode step has one each)."""

    is_compileable = False

    def __init__(self, rows: list[RowCache], new_tokens: list[int]) -> None:
        self.rows = rows
        self.new_tokens = new_tokens

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        for b, row in enumerate(self.rows):
            n = self.new_tokens[b]
            row.append(layer_idx, key_states[b, :, :n], value_states[b, :, :n])
        # The attention below reads the rows' buffers; what is returned here is unused.
        return key_states, value_states

    def attend(self, layer: int, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """Each row's queries against its own keys: [batch, q_len, heads, head_dim]."""
        batch, heads, q_len, head_dim = query.shape
        out = query.new_zeros(batch, heads, q_len, head_dim)
        for b, row in enumerate(self.rows):
            n = self.new_tokens[b]
            keys, values = row.view(layer)
            q = query[b : b + 1, :, :n]
            mask = None
            if n > 1:
                # Causal within the new tokens, everything before them visible.
                past = keys.shape[1] - n
                mask = torch.ones(n, keys.shape[1], dtype=torch.bool, device=query.device)
                mask[:, past:] = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
            out[b : b + 1, :, :n] = F.scaled_dot_product_attention(
                q,
                keys[None],
                values[None],
                attn_mask=mask,
                scale=scaling if scaling is not None else 1 / math.sqrt(head_dim),
                enable_gqa=heads != keys.shape[0],
            )
        return out.transpose(1, 2).contiguous()


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    cache: RaggedCache | None = getattr(_active, "cache", None)
    if cache is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    return cache.attend(module.layer_idx, query, scaling), None


AttentionInterface.register(ATTN_IMPLEMENTATION, _attention)


def use_ragged_attention(model: Any) -> bool:
    """Switch `model` to the ragged attention; False if its architecture cannot."""
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except (ValueError, AttributeError, NotImplementedError):
        return False
    return getattr(model.config, "_attn_implementation", None) == ATTN_IMPLEMENTATION


@contextmanager
def ragged_forward(cache: RaggedCache) -> Iterator[RaggedCache]:
    """Route this thread's attention through `cache` for the duration of one forward."""
    _active.cache = cache
    try:
        yield cache
    finally:
        _active.cache = None
