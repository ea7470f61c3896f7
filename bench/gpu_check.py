"""The device check: training and generation on 1 GPU and on all GPUs of a CUDA machine.

One short, prepared script for a GPU host (it fits in a few minutes and carries no weights:
the model is built here, random-initialised, in SmolLM2-135M's shape: hidden 576, 30 layers,
9 heads / 3 KV heads, MLP 1536, vocabulary 49152, tied embeddings; ~135M parameters).

1. Training: the same LoRA job (r=8, all linear layers, global batch `--batch-size`, 1 epoch
   of `--examples` rows) under torchrun on 1 process (1 GPU) and on N processes (every GPU:
   engine.distributed, NCCL, one device per rank); then the same as a full fine-tune, on 1
   process and on N sharded with FSDP2 (engine.fsdp). Reported: training tokens/s (the
   results file's elapsed tokens over the run's wall time, process start-up and model build
   included: a conservative figure), peak GPU memory of rank 0, and the N-vs-1 scaling.
2. Generation: greedy decoding of `--new-tokens` tokens for a batch of prompts on 1 GPU
   (transformers' generate, KV cache): tokens/s and peak memory.

    .venv/bin/python bench/gpu_check.py [--examples 512] [--batch-size 32] [--json FILE]
    .venv/bin/python bench/gpu_check.py --smoke    # CPU, a tiny shape: checks the script runs

Record its figures in docs/benchmarks/gpu.md.
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
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine  # noqa: E402

SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
SMOKE = {**SMOLLM2_135M, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1024}  # fmt: skip
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
    "cloud",
    "tree",
]


def build_model(out: Path, shape: Mapping[str, Any]) -> Path:
    """engine.tiny's tokenizer (ChatML), and a random-init Llama of `shape` (no download)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.tiny import build_tiny_model

    build_tiny_model(out, vocab_size=1024)  # the tokenizer (and a throwaway tiny model)
    base = json.loads((out / "config.json").read_text())
    config = LlamaConfig(
        **shape,
        bos_token_id=base.get("bos_token_id"),
        eos_token_id=base.get("eos_token_id"),
        pad_token_id=base.get("pad_token_id"),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    return out


def train(
    model: Path, data: Path, root: Path, nproc: int, batch_size: int, device: str, method: str
) -> dict[str, Any]:
    from engine.spec import TrainSpec

    out = root / f"train-{method}-{nproc}"
    out.mkdir()
    spec = TrainSpec(
        model_source=str(model), train_path=str(data), output_dir=str(out / "work"),
        n_epochs=1, batch_size=batch_size, seed=1, checkpoint_every_seconds=None, device=device,
        method=method,  # type: ignore[arg-type]  # "lora" | "full", from main()
    )  # fmt: skip
    (out / "spec.json").write_text(json.dumps(asdict(spec)))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc-per-node={nproc}", "-m", "engine.distributed", str(out / "spec.json"),
         str(out / "result.json")],
        capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stdout[-3000:] + proc.stderr[-3000:])
    result = json.loads((out / "result.json").read_text())
    with open(result["results_csv"]) as fh:
        rows = list(csv.DictReader(fh))
    tokens = float(rows[-1]["elapsed_tokens"])
    seconds = wall
    return {
        "method": method,
        "processes": nproc,
        "steps": result["steps"],
        "tokens": tokens,
        "wall_s": wall,
        "tokens_per_s": tokens / seconds,
        "peak_gib": result.get("peak_cuda_bytes", 0) / 2**30,
        "final_loss": float(rows[-1]["training_loss"]),
    }


def generate(model: Path, device: str, batch: int, new_tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    tok.padding_side = "left"
    net = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16 if device != "cpu"
                                               else torch.float32)  # fmt: skip
    net = net.to(device)  # type: ignore[arg-type]  # transformers' typed .to wrapper wants the model
    prompts = [" ".join(random.Random(i).choice(WORDS) for _ in range(32)) for i in range(batch)]
    enc = tok(prompts, return_tensors="pt", padding=True).to(device)
    if device != "cpu":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = net.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False, pad_token_id=tok.pad_token_id)  # fmt: skip
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    made = (out.shape[1] - enc["input_ids"].shape[1]) * batch
    peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else 0.0
    return {"batch": batch, "tokens": made, "tokens_per_s": made / seconds, "peak_gib": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--gen-batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shape: the script runs")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    if args.smoke:
        device, shape, n_gpus = "cpu", SMOKE, 2
        args.examples, args.batch_size, args.gen_batch, args.new_tokens = 32, 8, 2, 8
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run it on a GPU host (or --smoke to test it)")
    else:
        device, shape, n_gpus = "cuda", SMOLLM2_135M, torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_model(root / "model", shape)
        rng = random.Random(0)
        data = root / "train.jsonl"
        data.write_text("".join(
            json.dumps({"prompt": " ".join(rng.choice(WORDS) for _ in range(48)) + " ->",
                        "completion": " " + " ".join(rng.choice(WORDS) for _ in range(16))}) + "\n"
            for _ in range(args.examples)
        ))  # fmt: skip
        runs = []
        for method in ("lora", "full"):  # full on N processes: sharded (FSDP2)
            for nproc in sorted({1, n_gpus}):
                runs.append(train(model, data, root, nproc, args.batch_size, device, method))
        gen = generate(model, device, args.gen_batch, args.new_tokens)
    print(f"machine: {machine(device)}; {n_gpus} device(s); load {os.getloadavg()[0]:.2f}")
    print(f"{'method':>6} {'processes':>9} {'steps':>5} {'tokens/s':>10} {'wall s':>7} "
          f"{'peak GiB':>8} {'loss':>7}")  # fmt: skip
    for r in runs:
        print(f"{r['method']:>6} {r['processes']:>9} {r['steps']:>5} {r['tokens_per_s']:>10.0f} "
              f"{r['wall_s']:>7.1f} {r['peak_gib']:>8.2f} {r['final_loss']:>7.3f}")  # fmt: skip
    for method in ("lora", "full"):
        pair = [r for r in runs if r["method"] == method]
        if len(pair) > 1:
            print(f"{method} scaling {n_gpus} vs 1: "
                  f"{pair[1]['tokens_per_s'] / pair[0]['tokens_per_s']:.2f}x")  # fmt: skip
    print(f"generation: batch {gen['batch']}, {gen['tokens_per_s']:.0f} tokens/s, "
          f"peak {gen['peak_gib']:.2f} GiB")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"train": runs, "generate": gen}))


if __name__ == "__main__":
    main()
