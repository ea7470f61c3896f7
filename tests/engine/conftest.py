"""Engine fixtures: a tiny random model built once per test session."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete Hugging Face model directory (LlamaForCausalLM + tokenizer + chat template).

    Session-scoped because it is read-only for tests: anything that trains writes elsewhere.
    """
    from engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


WORDS = ["apple", "banana", "cherry", "dog", "cat", "blue", "red", "green", "sun", "moon"]


def word_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Prompt/completion rows of random words: distinct prompts, arbitrary completions."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = f"{i} " + " ".join(rng.choice(WORDS) for _ in range(3)) + " ->"
        completion = " " + " ".join(rng.choice(WORDS) for _ in range(2))
        rows.append({"prompt": prompt, "completion": completion})
    return rows


@pytest.fixture
def train_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "train.jsonl", word_rows(8))
