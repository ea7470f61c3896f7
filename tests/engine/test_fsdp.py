"""Sharded (FSDP) full fine-tuning under torchrun: 2 gloo processes on CPU train the same run
as 1, write the checkpoints a 1-process run writes, resume each other's, and stop together.

Real processes (`python -m torch.distributed.run`), the real gloo backend, the tiny model (its
tied embedding and output head are one weight in FSDP's root group).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import engine
from engine import checkpoints as ckpt
from engine.spec import TrainSpec
from tests.engine.conftest import (
    torchrun,
    torchrun_result,
    training_losses,
    word_rows,
    write_jsonl,
)
from tests.engine.test_trainer import read_rows

pytestmark = pytest.mark.slow

# A 2-process run's per-step training loss against the 1-process run's, relative. FSDP sums
# the same gradient in another order (each rank's packs, then a reduce-scatter), so the runs
# differ by rounding only: measured 5e-5 over 12 steps with bf16 autocast (on a CPU that has
# it), which turns last-bit differences into bf16 ones; in fp32 the curves agree to the
# results file's 6 digits.
LOSS_RTOL = 1e-3


def _spec(model_dir: Path, data: Path, out: Path, **overrides: Any) -> TrainSpec:
    values: dict[str, Any] = {
        "model_source": str(model_dir),
        "train_path": str(data),
        "output_dir": str(out),
        "method": "full",
        "n_epochs": 2,
        # 16 examples: 6 steps an epoch, whose 2 ranks get 2 and 1 examples (the last: 1 and
        # none), each its own pack: ranks with fewer packs than the other keep FSDP's
        # collectives in step with zero losses.
        "batch_size": 3,
        "max_tokens_per_pack": 1,
        "seed": 7,
        "base_learning_rate": 2e-2,  # x 0.05 (batch 3): 1e-3
        "checkpoint_every_seconds": None,
        "num_threads": 1,
    }
    values.update(overrides)
    return TrainSpec(**values)


@dataclass
class Runs:
    model_dir: Path
    root: Path
    data: Path
    options: dict[str, Any]  # the spec's besides _spec's
    one: engine.TrainResult  # 1 process
    two: dict[str, Any]  # 2 processes, sharded: its TrainResult as JSON
    events: list[dict[str, Any]]  # rank 0's hook calls in the 2-process run


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    """The same full fine-tune (16 examples, 2 epochs of 6 steps, validated every 2 steps) in
    1 process and in 2."""
    root = tmp_path_factory.mktemp("fsdp")
    data = write_jsonl(root / "train.jsonl", word_rows(16))
    validation = write_jsonl(root / "validation.jsonl", word_rows(5, seed=1))
    options: dict[str, Any] = {"validation_path": str(validation), "validation_every_n_steps": 2}
    one = engine.train(_spec(tiny_model_dir, data, root / "one", **options))
    events = root / "events.jsonl"
    spec = _spec(tiny_model_dir, data, root / "two", num_threads=None, **options)
    two = torchrun_result(torchrun(spec, root, 2, "--events", str(events)), root, 2)
    lines = events.read_text().splitlines()
    return Runs(tiny_model_dir, root, data, options, one, two, [json.loads(line) for line in lines])


def test_fsdp_on_two_processes_trains_the_same_full_fine_tune_as_one(runs: Runs) -> None:
    one, two = runs.one, runs.two
    messages = [e["message"] for e in runs.events if e["hook"] == "on_event"]
    assert any("Sharding the model across 2 processes (FSDP)" in m for m in messages)
    assert two["status"] == "succeeded"
    assert two["steps"] == one.steps == 12  # same global batch: same steps and schedule
    assert two["trained_tokens"] == one.trained_tokens  # stats summed over the ranks
    a, b = training_losses(one.results_csv), training_losses(two["results_csv"])
    assert len(a) == len(b) == 12
    assert b == pytest.approx(a, rel=LOSS_RTOL)
    validation_a, validation_b = (
        [float(r["validation_loss"]) for r in read_rows(path) if r["validation_loss"]]
        for path in (one.results_csv, two["results_csv"])
    )
    assert len(validation_a) == 6
    assert validation_b == pytest.approx(validation_a, rel=LOSS_RTOL)
    print(  # noqa: T201 -- the figure the docs quote, shown with `pytest -s`
        f"\nlargest relative loss difference, FSDP 2 processes vs 1: "
        f"{max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True)):.2g}"
    )


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _shapes(weights: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in weights.items()}


def test_fsdp_checkpoints_are_written_once_in_the_one_process_format(runs: Runs) -> None:
    two_dir = Path(runs.two["output_dir"])
    assert not list(two_dir.glob(".rank-*"))  # rank 0 alone wrote
    assert [Path(c["path"]).name for c in runs.two["checkpoints"]] == ["step-6", "step-12"]
    # The epoch-1 resume checkpoint: the same files, holding whole tensors (not a rank's shard).
    a = Path(runs.one.output_dir) / "resume" / "step-6"
    b = two_dir / "resume" / "step-6"
    assert _files(b) == _files(a)
    weights_a, weights_b = (load_file(d / "model" / "model.safetensors") for d in (a, b))
    assert _shapes(weights_b) == _shapes(weights_a)
    optimizer_a, optimizer_b = (torch.load(d / "optimizer.pt") for d in (a, b))
    assert optimizer_b["param_groups"] == optimizer_a["param_groups"]
    assert optimizer_b["state"].keys() == optimizer_a["state"].keys()
    for index, state in optimizer_a["state"].items():
        assert _shapes(optimizer_b["state"][index]) == _shapes(state)
    # ...and the same values, up to the runs' rounding (measured: 5e-6 of what training changed;
    # AdamW can turn rounding-sized gradient differences into lr-sized steps where a gradient
    # is near 0: two 1-process runs packing their batches differently differ by up to 1.5%).
    base = load_file(runs.model_dir / "model.safetensors")
    for name, weight in weights_a.items():
        moved = float((weight - base[name]).norm())
        assert float((weights_b[name] - weight).norm()) < 0.05 * moved, name
    for index, state in optimizer_a["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            moment = state[key]
            assert float((optimizer_b["state"][index][key] - moment).norm()) < 0.05 * float(
                moment.norm()
            )
    final = load_file(Path(runs.two["model_dir"]) / "model.safetensors")
    assert _shapes(final) == _shapes(load_file(Path(runs.one.model_dir) / "model.safetensors"))


def test_fsdp_checkpoints_resume_with_another_world_size(runs: Runs, tiny_model_dir: Path) -> None:
    expected = training_losses(runs.one.results_csv)
    # 2 -> 1: the sharded run's epoch-1 checkpoint, continued in one process.
    two_ckpt = Path(runs.two["output_dir"]) / "resume" / "step-6"
    out = runs.root / "two-to-one"
    spec = _spec(tiny_model_dir, runs.data, out, resume_from=str(two_ckpt), **runs.options)
    from_two = engine.train(spec)
    assert from_two.status == "succeeded" and from_two.steps == 12
    assert training_losses(from_two.results_csv) == pytest.approx(expected, rel=LOSS_RTOL)
    # 1 -> 2: the 1-process run's, continued sharded (each rank takes its shard of the moments).
    one_ckpt = Path(runs.one.output_dir) / "resume" / "step-6"
    run_dir = runs.root / "one-to-two"
    run_dir.mkdir()
    spec = _spec(
        tiny_model_dir, runs.data, run_dir / "out", resume_from=str(one_ckpt), **runs.options
    )
    spec.num_threads = None
    from_one = torchrun_result(torchrun(spec, run_dir, 2), run_dir, 2)
    assert from_one["status"] == "succeeded" and from_one["steps"] == 12
    assert training_losses(from_one["results_csv"]) == pytest.approx(expected, rel=LOSS_RTOL)


def test_fsdp_a_stop_on_rank_0_stops_every_rank_with_a_whole_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", word_rows(120))  # 2 x 40 steps
    spec = _spec(tiny_model_dir, data, tmp_path / "run", num_threads=None)
    stop = tmp_path / "stop"
    proc = torchrun(spec, tmp_path, 2, "--stop-file", str(stop))
    results = Path(spec.output_dir) / "compiled_results.csv"
    deadline = time.monotonic() + 240
    while not (results.exists() and len(results.read_text().splitlines()) > 3):
        assert proc.poll() is None, (tmp_path / "torchrun-2.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stop.touch()  # the runner's cancel/pause, seen by rank 0 only
    stopped = torchrun_result(proc, tmp_path, 2)  # both ranks exited: none hangs in a gather
    assert stopped["status"] == "stopped" and 0 < stopped["steps"] < 80
    resume = Path(stopped["resume_checkpoint"])
    assert ckpt.is_resumable(resume) and ckpt.load_state(resume).step == stopped["steps"]
