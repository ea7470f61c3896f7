"""Data-parallel training over several processes (torchrun), for LoRA and full fine-tuning.

torchrun starts N copies of `python -m engine.distributed SPEC.json`; each reads its RANK,
WORLD_SIZE and the rendezvous from the environment (one node or many: torchrun's
`--nnodes/--rdzv-endpoint`), and joins a process group (gloo on CPU, NCCL on CUDA, one device
per process: LOCAL_RANK).

Two ways to hold the model, by one rule (engine.fsdp.wanted):
- LoRA replicates: every rank holds the whole model, and the adapter's gradients are summed
  across ranks with one all-reduce of one flat buffer per step (`World.sum_grads`). We reduce
  explicitly instead of wrapping the model in torch's DistributedDataParallel because the
  trainer's packed forward calls the model's inner modules directly (DDP's hooks sit on the
  wrapper's forward) and a step is several packs (gradient accumulation); the all-reduce is
  the same one DDP does, once per step.
- Full fine-tuning shards (FSDP2, engine.fsdp): each rank holds 1/N of every weight, gradient
  and optimizer moment; a layer's weights are gathered for its forward and backward, its
  gradients summed by a reduce-scatter. Every forward and backward is then a collective, so
  every rank runs as many per step (a rank with fewer packs runs a zero loss).

How a run stays the same run whatever the world size:
- every rank builds the same model from the same seed and walks the same global batches (the
  batch order is a function of (seed, epoch) only); each takes every world-th example (or DPO
  pair) of the batch (`shard`), so the global batch size, the steps, the learning-rate
  schedule and the checkpoints are those of the 1-process run;
- each rank's loss is its examples' share of the *global* batch's weighted loss, and the
  gradients are summed across ranks: that is the 1-process gradient, up to floating-point
  summation order (CI: the loss curves of 2 gloo processes and of 1 agree within 1e-3
  relative, measured ~5e-5, replicated and sharded alike);
- the step's statistics (loss, tokens, accuracy counts) are summed the same way, so rank 0
  reports the global batch's metrics;
- rank 0 alone writes (results file, checkpoints, the model) and talks to the hooks (events,
  metrics, progress, cancel/pause); its decisions — stop, may-write, a checkpoint is due —
  are broadcast every step, so all ranks stop, and checkpoint, together. A checkpoint holds
  no rank-specific state (the RNG is not used by training without dropout, the data order is
  the seed's; a sharded run gathers the whole model and optimizer state for rank 0 to write
  in the 1-process format), so it resumes with any world size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from engine.spec import Hooks

T = TypeVar("T")


class World:
    """This process's place in the run; a 1-process world does no communication."""

    def __init__(self) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.active = self.size > 1 and dist.is_available()
        if self.active and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, picked: str) -> str:
        """One CUDA device per process (LOCAL_RANK); CPU stays CPU."""
        if self.active and picked.startswith("cuda"):
            return f"cuda:{self.local_rank}"
        return picked

    def shard(self, examples: Sequence[T]) -> list[T]:
        return list(examples[self.rank :: self.size]) if self.active else list(examples)

    def sum_grads(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients of `params` across ranks, in place (one flat all-reduce)."""
        if not self.active:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p, g in zip(params, grads, strict=True):
            n = g.numel()
            chunk = flat[offset : offset + n].view_as(g)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += n

    def sum_stats(self, stats: Any) -> Any:
        """Sum a dataclass of counters (engine.trainer.BatchStats) across ranks, in place."""
        if not self.active:
            return stats
        names = [f.name for f in fields(stats)]
        values = torch.tensor([float(getattr(stats, n)) for n in names], dtype=torch.float64)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        for name, value in zip(names, values.tolist(), strict=True):
            current = getattr(stats, name)
            setattr(stats, name, type(current)(value) if isinstance(current, int) else value)
        return stats

    def most(self, count: int) -> int:
        """The largest of the ranks' `count`s, on every rank."""
        if not self.active:
            return count
        value = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return int(value.item())

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag`, on every rank (stop? may write?)."""
        if not self.active:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.broadcast(value, src=0)
        return bool(value.item())


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies, so a training worker killed -9
    leaves no ranks behind (they would hold the device and write to a job given to another
    worker). A no-op elsewhere."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    """`torchrun --nproc-per-node N -m engine.distributed SPEC.json [RESULT.json]`: train the
    spec on N processes; rank 0 writes RESULT.json (engine.TrainResult as JSON)."""
    import argparse
    import json
    from dataclasses import asdict

    from engine.spec import TrainSpec
    from engine.trainer import train

    parser = argparse.ArgumentParser(prog="python -m engine.distributed")
    parser.add_argument("spec", help="a TrainSpec as JSON")
    parser.add_argument("result", nargs="?", help="where rank 0 writes the TrainResult")
    parser.add_argument(
        "--stop-file", help="stop (all ranks, after a resume checkpoint) once this file exists"
    )
    parser.add_argument("--fenced-file", help="write nothing more once this file exists")
    parser.add_argument("--events", help="append rank 0's hook calls here, as JSON lines")
    args = parser.parse_args(argv)
    die_with_parent()
    from engine.spec import LoraSpec

    with open(args.spec) as fh:
        data = json.load(fh)
    data["lora"] = LoraSpec(**data.get("lora", {}))
    spec = TrainSpec(**data)
    hooks = FileHooks(args.events, args.stop_file, args.fenced_file)
    try:
        result = train(spec, hooks)
        if int(os.environ.get("RANK", "0")) == 0 and args.result:
            out = asdict(result)
            if torch.cuda.is_available():  # rank 0's device, for bench/gpu_check.py
                out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
            with open(args.result, "w") as fh:
                json.dump(out, fh, default=str)
        if dist.is_available() and dist.is_initialized():
            # Leave together: rank 0 is often still writing a checkpoint the others helped
            # gather, and a rank that tore its gloo group down meanwhile could die in gloo
            # with SIGABRT ("terminate called without an active exception", a stopped
            # FSDP run in CI), which fails the whole run.
            dist.barrier()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


class FileHooks(Hooks):
    """Rank 0's hooks for the command line, through files (the engine stays framework-free:
    the caller, e.g. jobs.runner, relays them):
    - every callback is appended to `events` as one JSON line (`{"hook": name, ...}`);
    - `should_stop` once `stop` exists (cancel, pause: the other ranks follow rank 0);
    - `may_write` until `fenced` exists (the job was given to another attempt)."""

    def __init__(
        self, events: str | None = None, stop: str | None = None, fenced: str | None = None
    ) -> None:
        self.events = open(events, "a", buffering=1) if events else None  # noqa: SIM115
        self.stop, self.fenced = stop, fenced

    def _emit(self, hook: str, **data: Any) -> None:
        if self.events is not None:
            import json

            self.events.write(json.dumps({"hook": hook, **data}) + "\n")

    def on_event(self, level: str, message: str) -> None:
        self._emit("on_event", level=level, message=message)

    def on_metrics(self, row: dict[str, float]) -> None:
        self._emit("on_metrics", row=row)

    def on_progress(
        self, step: int, total_steps: int, tokens: int, eta_seconds: float | None
    ) -> None:
        self._emit(
            "on_progress",
            step=step,
            total_steps=total_steps,
            tokens=tokens,
            eta_seconds=eta_seconds,
        )

    def on_checkpoint(self, info: Any) -> None:
        from dataclasses import asdict

        self._emit("on_checkpoint", info=asdict(info))

    def on_resume_checkpoint(self, path: str) -> None:
        self._emit("on_resume_checkpoint", path=path)

    def should_stop(self) -> bool:
        return self.stop is not None and os.path.exists(self.stop)

    def may_write(self) -> bool:
        return not (self.fenced and os.path.exists(self.fenced))


if __name__ == "__main__":
    raise SystemExit(main())
