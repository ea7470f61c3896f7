"""Public ids in OpenAI's shapes (file-…, ft-…, ftjob-…, ftevent-…, ftckpt_…)."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_letters + string.digits


def random_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(ALPHABET) for _ in range(length))
