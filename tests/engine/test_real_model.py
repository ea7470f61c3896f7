"""The embedded default base model, SmolLM2-135M-Instruct, from the installed package."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from engine import DEFAULT_MODEL_SOURCE, TrainSpec, resolve_model_source, train
from engine.models import context_length, default_cache_dir
from tests.engine.conftest import write_jsonl

pytestmark = pytest.mark.slow


def test_smollm2_loads_offline_and_trains_a_few_steps(tmp_path: Path) -> None:
    # The persistent cache (TUNERY_MODEL_CACHE_DIR or ~/.cache/tunery/models): dequantizing the GGUF
    # takes ~30 s the first time only.
    model_dir = resolve_model_source(DEFAULT_MODEL_SOURCE, str(default_cache_dir()))
    assert context_length(model_dir) == 8192
    rows = [
        {"prompt": f"Is message {i} spam?\n\n###\n\n", "completion": " yes" if i % 2 else " no"}
        for i in range(6)
    ]
    data = write_jsonl(tmp_path / "train.jsonl", rows)

    result = train(
        TrainSpec(
            model_source=DEFAULT_MODEL_SOURCE,
            train_path=str(data),
            output_dir=str(tmp_path / "out"),
            n_epochs=1,
            batch_size=2,
            cache_dir=str(default_cache_dir()),
        )
    )

    assert result.status == "succeeded"
    assert result.steps == 3
    with open(result.results_csv, newline="") as handle:
        losses = [float(r["training_loss"]) for r in csv.DictReader(handle)]
    assert all(0 < loss < 20 for loss in losses)
    assert (Path(result.model_dir) / "adapter_model.safetensors").exists()
