"""Multi-process training under torchrun: 2 gloo processes on CPU train the same run as 1.

Real processes (`python -m torch.distributed.run`), the real gloo backend, the tiny model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.spec import TrainSpec
from tests.engine.conftest import (
    torchrun,
    torchrun_result,
    training_losses,
    word_rows,
    write_jsonl,
)

pytestmark = pytest.mark.slow

# A 2-process run's per-step training loss against the 1-process run's. The gradient is the
# same sum taken in another order (two partial sums, then an all-reduce), so the runs differ by
# float32 rounding only, which 8 steps of Adam amplify to ~5e-5 (measured).
LOSS_RTOL = 1e-3


def _spec(tiny_model_dir: Path, tmp_path: Path, out: str, n: int = 16) -> TrainSpec:
    data = write_jsonl(tmp_path / "train.jsonl", word_rows(n))
    return TrainSpec(
        model_source=str(tiny_model_dir),
        train_path=str(data),
        output_dir=str(tmp_path / out),
        n_epochs=2,
        batch_size=4,
        seed=7,
        base_learning_rate=2e-2,
        checkpoint_every_seconds=None,
        num_threads=1,
    )


def test_two_gloo_processes_train_the_same_run_as_one(tiny_model_dir: Path, tmp_path: Path) -> None:
    one = engine.train(_spec(tiny_model_dir, tmp_path, "one"))
    spec = _spec(tiny_model_dir, tmp_path, "two")
    spec.num_threads = None  # each process takes its share of the cores
    proc = torchrun(spec, tmp_path, 2)
    assert proc.wait(timeout=300) == 0, (tmp_path / "torchrun-2.log").read_text()[-3000:]
    two = json.loads((tmp_path / "result-2.json").read_text())
    assert two["status"] == "succeeded"
    assert two["steps"] == one.steps == 8  # same global batch: same steps and schedule
    assert two["hyperparameters"] == one.hyperparameters
    assert two["trained_tokens"] == one.trained_tokens  # stats summed over the ranks
    a, b = training_losses(one.results_csv), training_losses(two["results_csv"])
    assert len(a) == len(b) == 8
    assert b == pytest.approx(a, rel=LOSS_RTOL)
    # Rank 0 alone wrote: one model, one checkpoint per epoch, no other rank's files left.
    assert Path(two["model_dir"], "adapter_model.safetensors").is_file()
    assert [Path(c["path"]).name for c in two["checkpoints"]] == ["step-4", "step-8"]
    assert not list((tmp_path / "two").glob(".rank-*"))
    print(  # noqa: T201 -- the figure the docs quote, shown with `pytest -s`
        f"\nlargest relative loss difference 1 vs 2 processes: "
        f"{max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)):.2g}"
    )


def test_a_stop_on_rank_0_stops_every_rank_and_resumes_with_another_world_size(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = _spec(tiny_model_dir, tmp_path, "run", n=160)  # 2 x 40 steps
    spec.batch_size = 4
    stop = tmp_path / "stop"
    proc = torchrun(spec, tmp_path, 2, "--stop-file", str(stop))
    results = Path(spec.output_dir) / "compiled_results.csv"
    deadline = time.monotonic() + 240
    while not (results.exists() and len(results.read_text().splitlines()) > 3):
        assert proc.poll() is None, (tmp_path / "torchrun-2.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop.touch()  # the runner's cancel/pause, seen by rank 0 only
    assert proc.wait(timeout=120) == 0, (tmp_path / "torchrun-2.log").read_text()[-3000:]
    stopped = json.loads((tmp_path / "result-2.json").read_text())
    assert stopped["status"] == "stopped" and 0 < stopped["steps"] < 80
    assert stopped["resume_checkpoint"]
    # The checkpoint holds nothing rank-specific: one process continues it to the end.
    spec.resume_from = stopped["resume_checkpoint"]
    resumed = engine.train(spec)
    assert resumed.status == "succeeded" and resumed.steps == 80


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_on_two_gloo_processes_is_the_one_process_run(
    method: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Each rank takes every 2nd pair of a global batch, its loss that share of the global mean:
    # summed gradients (LoRA: one all-reduce; full: FSDP's reduce-scatter) are the 1-process one.
    # In fp32: the DPO loss turns bf16's rounding of differently packed rows into differences
    # of up to 1e-3 even between two 1-process runs (measured); in fp32 those are ~2e-6.
    from tests.engine.test_dpo import dpo_spec, pair_rows

    data = write_jsonl(tmp_path / "train.jsonl", pair_rows(8))
    # 8 pairs in batches of 3, each pair its own pack: the ranks get 2 and 1 packs, and FSDP's
    # collectives are kept in step with a zero loss.
    options: dict[str, Any] = {
        "method": method,
        "learning_rate_multiplier": 0.1,
        "bf16": False,
        "batch_size": 3,
        "max_tokens_per_pack": 1,
    }
    one = engine.train(dpo_spec(tiny_model_dir, data, tmp_path / "one", **options))
    spec = dpo_spec(tiny_model_dir, data, tmp_path / "two", num_threads=None, **options)
    two = torchrun_result(torchrun(spec, tmp_path, 2), tmp_path, 2)
    assert two["status"] == "succeeded" and two["steps"] == one.steps == 9
    assert two["trained_tokens"] == one.trained_tokens
    a, b = training_losses(one.results_csv), training_losses(two["results_csv"])
    assert b == pytest.approx(a, rel=LOSS_RTOL)
    print(  # noqa: T201 -- the figure the docs quote, shown with `pytest -s`
        f"\nlargest relative DPO loss difference ({method}) 1 vs 2 processes: "
        f"{max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)):.2g}"
    )
