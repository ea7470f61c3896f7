from __future__ import annotations

from tests.playground.support import fresh_backend, make_fine_tune, tiny_base, tiny_dirs

__all__ = ["fresh_backend", "make_fine_tune", "tiny_base", "tiny_dirs"]
