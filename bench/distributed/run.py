"""1 vs N training processes for the same job (engine.distributed under torchrun).

Both runs go through torchrun (`--nproc-per-node 1` and `N`), on the same spec: a random-init
Llama (engine.tiny, `--hidden`/`--layers`), LoRA (`--method full`: full fine-tuning, which N > 1
processes shard with FSDP, engine.fsdp), prompt/completion rows of random words, the same
global batch, epochs and seed. On a CPU host every process gets its share of the cores
(N processes on C cores: C/N threads each), so on a 2-core machine this measures the overhead
of data parallelism (an all-reduce per step, two processes' memory), not a speed-up; on a
multi-GPU host it is the scaling.

Reported per world size: wall time of the whole run (process start to exit: model loading
included), the training steps' examples/s (from the results file's elapsed time), peak RSS of
the ranks, and the largest relative difference of the per-step training loss to the 1-process
run.

    .venv/bin/python bench/distributed/run.py [--nproc 2] [--method lora|full] [--examples 128]
        [--batch-size 8] [--hidden 256] [--layers 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import machine  # noqa: E402

WORDS = [
    "apple",
    "banana",
    "cherry",
    "dog",
    "cat",
    "blue",
    "red",
    "green",
    "sun",
    "moon",
    "river",
    "stone",
]


def _rows(n: int) -> list[dict[str, str]]:
    rng = random.Random(0)
    return [
        {
            "prompt": f"{i} " + " ".join(rng.choice(WORDS) for _ in range(12)) + " ->",
            "completion": " " + " ".join(rng.choice(WORDS) for _ in range(6)),
        }
        for i in range(n)
    ]


def _run(spec_path: Path, out: Path, nproc: int) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={nproc}", "-m", "engine.distributed", str(spec_path),
         str(out / "result.json")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    result = json.loads((out / "result.json").read_text())
    with open(result["results_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    return {
        "wall_s": wall,
        "steps": result["steps"],
        "losses": [float(r["training_loss"]) for r in rows],
        "examples": float(rows[-1]["elapsed_examples"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--examples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--json")
    args = parser.parse_args()

    from engine.spec import TrainSpec
    from engine.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_model(
            root / "model", hidden_size=args.hidden, num_layers=args.layers, vocab_size=1024
        )
        data = root / "train.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in _rows(args.examples)))
        results: dict[int, dict[str, Any]] = {}
        for nproc in (1, args.nproc):
            out = root / f"run-{nproc}"
            out.mkdir()
            spec = TrainSpec(
                model_source=str(model),
                train_path=str(data),
                output_dir=str(out / "work"),
                method=args.method,
                n_epochs=1,
                batch_size=args.batch_size,
                seed=1,
                checkpoint_every_seconds=None,
            )
            spec_path = out / "spec.json"
            spec_path.write_text(json.dumps(asdict(spec)))
            results[nproc] = _run(spec_path, out, nproc)
        base = results[1]["losses"]
        load = os.getloadavg()
        print(f"machine: {machine()}; load average at the end {load[0]:.2f}; {args.method}")
        print(f"{'processes':>9} {'wall s':>8} {'steps':>6} {'max rel loss diff':>18}")
        for nproc, r in results.items():
            diff = max(abs(a - b) / abs(a) for a, b in zip(base, r["losses"], strict=True))
            r["max_rel_loss_diff"] = diff
            print(f"{nproc:>9} {r['wall_s']:>8.1f} {r['steps']:>6} {diff:>18.2g}")
        overhead = results[args.nproc]["wall_s"] / results[1]["wall_s"]
        print(f"{args.nproc} processes / 1 process wall time: {overhead:.2f}x")
        if args.json:
            Path(args.json).write_text(json.dumps({str(k): v for k, v in results.items()}))


if __name__ == "__main__":
    main()
