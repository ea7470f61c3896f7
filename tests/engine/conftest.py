"""Engine fixtures: a tiny random model built once per test session."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from engine.spec import TrainSpec

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


def torchrun(spec: TrainSpec, run_dir: Path, nproc: int, *extra: str) -> subprocess.Popen[bytes]:
    """`python -m engine.distributed` on `nproc` real processes (torchrun, gloo on CPU); rank 0
    writes `run_dir/result-N.json`, the output goes to `run_dir/torchrun-N.log`."""
    spec_path = run_dir / f"spec-{nproc}.json"
    spec_path.write_text(json.dumps(asdict(spec)))
    log = open(run_dir / f"torchrun-{nproc}.log", "wb")  # noqa: SIM115 -- closed by the OS at exit
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={nproc}", "-m", "engine.distributed", str(spec_path),
         str(run_dir / f"result-{nproc}.json"), *extra],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip


def torchrun_result(proc: subprocess.Popen[bytes], run_dir: Path, nproc: int) -> dict[str, Any]:
    """Wait for a `torchrun` run; its TrainResult as JSON (the log's tail if it failed)."""
    log = run_dir / f"torchrun-{nproc}.log"
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    result: dict[str, Any] = json.loads((run_dir / f"result-{nproc}.json").read_text())
    return result


def training_losses(results_csv: str | Path) -> list[float]:
    with open(results_csv) as fh:
        return [float(row["training_loss"]) for row in csv.DictReader(fh)]
