"""Checkpoints, of two kinds.

Resume checkpoints (internal): everything needed to continue a run exactly where it stopped,
mid-epoch included. Written on a step/wall-clock cadence (engine.cadence), at each epoch end
but the last, and when the run is asked to stop. Layout of `output_dir/resume/step-N/`:
  model/          the adapter (PEFT format) or the full model
  optimizer.pt    AdamW state
  scheduler.pt    learning-rate scheduler state
  rng.pt          torch (CPU and CUDA), numpy and Python RNG states
  state.json      step, epoch, position in the epoch, counters
  results.csv     compiled_results.csv as it was at this step
  reference_logps.pt   DPO runs only: the reference model's log-probs of the pairs (engine.dpo)
Each is written to a temporary directory, fsynced and renamed into place, so a directory named
`step-N` is always complete; the newest `keep` (2) are kept.

Model checkpoints (exposed): `checkpoints_dir/step-N/model/` at each epoch end, what the API
lists as a job's checkpoints. No optimizer state. Written the same atomic way; their model files
are hard links to the resume checkpoint's when there is one at that step (no second copy).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"  # in model checkpoints: kept for readers of the older layout
RESULTS = "results.csv"
KEEP_RESUME = 2


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already done
    elapsed_tokens: int = 0
    elapsed_examples: int = 0
    validation_cursor: int = 0
    seconds: float = 0.0  # training time spent before this process, for ETA and throughput
    # Whole-validation-set scores of the epoch-end checkpoints so far (engine.selection).
    evaluations: list[dict[str, Any]] = field(default_factory=list)


# --- atomic directories -----------------------------------------------------------------------


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` (and `root` itself) to disk."""
    for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        _fsync(path)
    _fsync(root)


def _fsync(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary directory to its final name, replacing an older one."""
    _fsync_tree(tmp)
    if final.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _fsync(final.parent)


def _tmp_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _step_of(path: Path) -> int:
    return int(path.name.split("-", 1)[1])


def _steps(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()]
    return sorted(found, key=_step_of)


def remove_partial(root: Path) -> None:
    """Drop what a killed writer left: temporary and half-replaced directories."""
    if root.is_dir():
        for path in root.glob(".*-step-*"):
            shutil.rmtree(path, ignore_errors=True)


# --- resume checkpoints -----------------------------------------------------------------------


def resume_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "resume"


def list_resume(output_dir: str | Path) -> list[Path]:
    """Resume checkpoints in `output_dir`, oldest first."""
    return [p for p in _steps(resume_root(output_dir)) if is_resumable(p)]


def is_resumable(path: Path) -> bool:
    return all(
        (path / name).exists()
        for name in ("model", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
    )


def latest_resume(output_dir: str | Path) -> Path | None:
    found = list_resume(output_dir)
    return found[-1] if found else None


def save_resume(
    output_dir: str | Path,
    *,
    save_model: Callable[[Path], Any],
    optimizer_state: dict[str, Any],
    scheduler: Any,
    state: TrainState,
    results_csv: Path | None,
    keep: int = KEEP_RESUME,
    extra_files: Sequence[Path] = (),
) -> Path:
    root = resume_root(output_dir)
    name = f"step-{state.step}"
    tmp = _tmp_dir(root, name)
    save_model(tmp / "model")
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    if results_csv is not None and results_csv.is_file():
        shutil.copyfile(results_csv, tmp / RESULTS)
    for path in extra_files:  # what a run needs to resume besides this (DPO's reference)
        _link_or_copy(str(path), str(tmp / path.name))
    final = root / name
    _publish(tmp, final)
    for older in _steps(root)[:-keep]:
        shutil.rmtree(older, ignore_errors=True)
    return final


def load_state(path: Path) -> TrainState:
    known = {f.name for f in fields(TrainState)}
    data = json.loads((path / "state.json").read_text())
    return TrainState(**{k: v for k, v in data.items() if k in known})


def restore_training_state(
    path: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: str,
    load_optimizer: Callable[[dict[str, Any]], None] | None = None,
) -> TrainState:
    """Restore the optimizer (through `load_optimizer` if given: a sharded run takes its share
    of the whole state, engine.fsdp), the scheduler and the RNG; return the position."""
    if load_optimizer is None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device))
    else:
        load_optimizer(torch.load(path / "optimizer.pt", map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    # weights_only=False: the RNG states hold numpy arrays and Python tuples; the file is ours.
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return load_state(path)


# --- model checkpoints (exposed) --------------------------------------------------------------


def checkpoint_dir(checkpoints_dir: str | Path, step: int) -> Path:
    return Path(checkpoints_dir) / f"step-{step}"


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete model checkpoints, oldest first."""
    return [p for p in _steps(Path(checkpoints_dir)) if (p / COMPLETE).is_file()]


def save_model_checkpoint(
    checkpoints_dir: str | Path,
    step: int,
    *,
    link_from: Path | None = None,
    save_model: Callable[[Path], Any] | None = None,
) -> Path:
    """Write `checkpoints_dir/step-N/model`: hard links to `link_from`'s files (same weights,
    no second copy on disk), or `save_model(dir)` when there is nothing to link."""
    root = Path(checkpoints_dir)
    name = f"step-{step}"
    tmp = _tmp_dir(root, name)
    if link_from is not None:
        shutil.copytree(link_from, tmp / "model", copy_function=_link_or_copy)
    elif save_model is not None:
        save_model(tmp / "model")
    else:
        raise ValueError("save_model_checkpoint needs link_from or save_model")
    (tmp / COMPLETE).write_text("")
    final = root / name
    _publish(tmp, final)
    return final


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported
        shutil.copy2(src, dst)


# --- RNG ----------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
