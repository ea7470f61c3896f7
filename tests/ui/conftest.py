"""Inference fixtures (tests/playground/support.py): tiny base, LoRA adapters, registry rows."""

from __future__ import annotations

from tests.playground.support import fresh_backend, inference_base, make_fine_tune, tiny_dirs

__all__ = ["fresh_backend", "make_fine_tune", "inference_base", "tiny_dirs"]
