"""Checkpoints: everything needed to continue a run exactly where it stopped.

Layout of `output_dir/checkpoints/step-N/`:
  model/          the adapter (PEFT format) or the full model, loadable on its own
  optimizer.pt    AdamW state (only in the newest checkpoint, to bound disk use)
  scheduler.pt    learning-rate scheduler state
  rng.pt          torch (CPU and CUDA), numpy and Python RNG states
  state.json      step, epoch, position in the epoch, counters
  COMPLETE        written last: a checkpoint without it was interrupted and is ignored
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE = "COMPLETE"


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (0-based)
    batch_in_epoch: int = 0  # batches of that epoch already done
    elapsed_tokens: int = 0
    elapsed_examples: int = 0
    validation_cursor: int = 0
    seconds: float = 0.0  # training time spent before this process, for ETA and throughput


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return checkpoint_root(output_dir) / f"step-{step}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


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


def save_checkpoint(
    path: Path,
    *,
    save_model: Any,  # callable(dir) that writes the adapter or the model
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    save_model(path / "model")
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    torch.save(rng_state(), path / "rng.pt")
    (path / "state.json").write_text(json.dumps(asdict(state), indent=1))
    (path / COMPLETE).write_text("")
    # Older optimizer states are never resumed from (resume takes the newest checkpoint) and are
    # twice the size of the trainable weights: drop them.
    for older in list_checkpoints(path.parent.parent):
        if older != path:
            (older / "optimizer.pt").unlink(missing_ok=True)
    return path


def load_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / "state.json").read_text()))


def restore_training_state(
    path: Path, optimizer: torch.optim.Optimizer, scheduler: Any, device: str
) -> TrainState:
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt"))
    # weights_only=False: the RNG states hold numpy arrays and Python tuples; the file is ours.
    set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return load_state(path)
