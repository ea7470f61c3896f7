"""Row padding: the engine's LoRA step with rows rounded up under two bucket sizes, paired.

Under bf16 autocast on CPU the engine rounds each packed row up with a filler segment
(engine.data.padded_length, engine.trainer.BF16_CPU_BUCKET) so that few distinct shapes reach
oneDNN. This times the forward and backward of the same batches under each bucket in one
process, interleaved batch by batch (the order flipping every batch), so that a noisy
neighbour slows both sides alike; the first round warms kernels and is not counted. Reported:
seconds a round, tokens/s (real tokens) and the median of the paired per-batch time ratios.

    .venv/bin/python bench/train_throughput/padding.py [--buckets 64 16] [--batches 30]
        [--rounds 4] [--threads 2]

Same data and settings as run.py: the SMS spam rows, batch 8, LoRA r=8 alpha=16 on all linear
layers, loss on the completion only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.common import machine  # noqa: E402
from bench.train_throughput.run import DATA  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--buckets", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--examples", type=int, default=240)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from engine import DEFAULT_MODEL_SOURCE, LoraSpec, TrainSpec, resolve_model_source
    from engine.data import Tokenizing, load_examples, make_packs, padded_length
    from engine.models import default_cache_dir, use_bf16
    from engine.trainer import BatchStats, _pack_loss, build_runtime

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_dir = resolve_model_source(DEFAULT_MODEL_SOURCE, str(default_cache_dir()))
    spec = TrainSpec(
        model_source=str(model_dir),
        train_path=str(DATA),
        output_dir=tempfile.mkdtemp(prefix="tunery-padding-"),
        prompt_loss_weight=0.0,
        lora=LoraSpec(r=8, alpha=16, dropout=0.0),
        device="cpu",
    )
    runtime = build_runtime(spec, model_dir, "cpu", None)
    for param in runtime.model.parameters():
        if param.requires_grad:  # B starts at zero, which would skip part of the backward
            torch.nn.init.normal_(param, std=0.02)
    examples, _ = load_examples(DATA, Tokenizing(runtime.tokenizer, 0.0), 10**9, "truncate")
    examples = examples[: args.examples]
    order = torch.randperm(len(examples)).tolist()
    size = args.batch_size
    batches = [[examples[i] for i in order[j : j + size]] for j in range(0, len(order), size)]
    batches = batches[: args.batches]
    packs = {b: [next(iter(make_packs(x, 2048, b, 0))) for x in batches] for b in args.buckets}
    seconds: dict[int, list[float]] = {b: [] for b in args.buckets}
    for round_number in range(args.rounds):
        for i in range(len(batches)):
            flipped = args.buckets if (round_number + i) % 2 == 0 else args.buckets[::-1]
            for bucket in flipped:
                start = time.perf_counter()
                loss = _pack_loss(runtime, packs[bucket][i], 1.0, BatchStats())
                assert loss is not None
                torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated
                if round_number:
                    seconds[bucket].append(time.perf_counter() - start)
                runtime.model.zero_grad(set_to_none=True)

    tokens = sum(len(e.input_ids) for batch in batches for e in batch)
    counted = args.rounds - 1
    first = args.buckets[0]
    print(f"{machine('cpu')}, bf16 autocast: {use_bf16('cpu')}, {args.threads} threads")
    print("| bucket | row tokens (real) | s / round | tok/s | paired time ratio |")
    print("| --- | --- | --- | --- | --- |")
    for bucket in args.buckets:
        rows = sum(padded_length(sum(len(e.input_ids) for e in x), bucket) for x in batches)
        ratio = statistics.median(
            a / b for a, b in zip(seconds[bucket], seconds[first], strict=True)
        )
        total = sum(seconds[bucket])
        print(
            f"| {bucket} | {rows:,} ({tokens:,}) | {total / counted:.2f} | "
            f"{tokens * counted / total:.1f} | {ratio:.3f} |"
        )


if __name__ == "__main__":
    main()
