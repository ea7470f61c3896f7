"""The kernels of one training step, timed alone: where a step's time can and cannot go.

Two tables, at the shapes of a packed step of SmolLM2-135M (hidden 576, MLP 1536, 9 query and
3 key/value heads of 64) with LoRA rank 8:

- every matrix product of one LoRA linear layer, forward and backward (the frozen base GEMM
  and the six thin rank-r ones), in GFLOP/s: how close to peak the dense work can run;
- causal attention over a pack of examples, forward + backward, four ways: one SDPA call per
  example (what the engine does on CPU), one call with a block-diagonal mask, one call over the
  examples padded to the longest, and a hand-written padded `bmm` attention.

    .venv/bin/python bench/train_throughput/kernels.py --threads 2 [--dtype bfloat16]

docs/benchmarks/training.md has the figures and what they decided.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

LINEARS = {"q/o": (576, 576), "k/v": (576, 192), "gate/up": (576, 1536), "down": (1536, 576)}
# Token counts of eight SMS examples (prompt and completion), as batch 8 packs them.
PACK = [28, 35, 22, 41, 30, 26, 33, 30]
HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    for _ in range(max(calls // 10, 3)):  # warm the kernels and the allocator
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def gemm_table(rows: int, rank: int, dtype: torch.dtype, calls: int) -> None:
    print(f"\nGEMMs of one LoRA linear layer, {rows} rows, rank {rank}, {dtype}")
    print("| layer | product | us | GFLOP/s |\n| --- | --- | --- | --- |")
    for name, (fan_in, fan_out) in LINEARS.items():

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, dtype=dtype)

        x, g = randn(rows, fan_in), randn(rows, fan_out)
        weight, a, b, h = (
            randn(fan_out, fan_in),
            randn(rank, fan_in),
            randn(fan_out, rank),
            randn(rows, rank),
        )
        products = {
            "base forward x @ W.T": (x, weight.t()),
            "base input grad g @ W": (g, weight),
            "A forward x @ A.T": (x, a.t()),
            "B forward h @ B.T": (h, b.t()),
            "B grad h.T @ g": (h.t(), g),
            "h grad g @ B": (g, b),
            "A grad h.T @ x": (h.t(), x),
            "x grad h @ A": (h, a),
        }
        for label, (left, right) in products.items():
            took = seconds_per_call(partial(torch.matmul, left, right), calls)
            flops = 2 * left.shape[0] * left.shape[1] * right.shape[1]
            print(f"| {name} | {label} | {took * 1e6:.1f} | {flops / took / 1e9:.1f} |")


def attention_variants(lens: list[int]) -> dict[str, Callable[..., torch.Tensor]]:
    total, longest, groups = sum(lens), max(lens), HEADS // KV_HEADS
    segment = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens))
    position = torch.arange(total)
    block_mask = (segment[:, None] == segment[None, :]) & (position[:, None] >= position[None, :])
    # Where each packed token sits in a [examples * longest] padded layout.
    slots = torch.cat([torch.arange(n) + i * longest for i, n in enumerate(lens)])
    causal = torch.full((longest, longest), float("-inf")).triu(1)

    def pad(x: torch.Tensor) -> torch.Tensor:  # [1, h, L, d] -> [examples, h, longest, d]
        heads = x.shape[1]
        out = x.new_zeros(heads, len(lens) * longest, HEAD_DIM).index_copy(1, slots, x[0])
        return out.view(heads, len(lens), longest, HEAD_DIM).transpose(0, 1)

    def unpad(x: torch.Tensor) -> torch.Tensor:
        flat = x.transpose(0, 1).reshape(HEADS, len(lens) * longest, HEAD_DIM)
        return flat.index_select(1, slots).unsqueeze(0)

    def per_example(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        parts = zip(*(torch.split(t, lens, 2) for t in (q, k, v)), strict=True)
        outs = [
            F.scaled_dot_product_attention(a, b, c, is_causal=True, enable_gqa=True)
            for a, b, c in parts
        ]
        return torch.cat(outs, 2)

    def masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=block_mask, enable_gqa=True)

    def padded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out = F.scaled_dot_product_attention(
            pad(q), pad(k), pad(v), is_causal=True, enable_gqa=True
        )
        return unpad(out)

    def padded_bmm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys = pad(k).repeat_interleave(groups, 1)
        values = pad(v).repeat_interleave(groups, 1)
        scores = pad(q) @ keys.transpose(-1, -2) * HEAD_DIM**-0.5 + causal
        return unpad(scores.softmax(-1) @ values)

    return {
        "one SDPA call per example (the engine)": per_example,
        "one SDPA call, block-diagonal mask": masked,
        "one SDPA call, examples padded": padded,
        "hand-written padded bmm": padded_bmm,
    }


def step(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> None:
    *inputs, grad = tensors
    fn(*inputs).backward(grad)  # type: ignore[no-untyped-call]  # torch's backward is untyped


def attention_table(lens: list[int], calls: int) -> None:
    total = sum(lens)
    q = torch.randn(1, HEADS, total, HEAD_DIM, requires_grad=True)
    k = torch.randn(1, KV_HEADS, total, HEAD_DIM, requires_grad=True)
    v = torch.randn(1, KV_HEADS, total, HEAD_DIM, requires_grad=True)
    grad = torch.randn(1, HEADS, total, HEAD_DIM)
    variants = attention_variants(lens)
    reference = variants["one SDPA call per example (the engine)"](q, k, v).detach()
    print(f"\nCausal attention over a pack of {len(lens)} examples ({total} tokens), fp32")
    print("| variant | ms, forward + backward | max difference |\n| --- | --- | --- |")
    for name, fn in variants.items():
        difference = (fn(q, k, v).detach() - reference).abs().max().item()
        took = seconds_per_call(partial(step, fn, q, k, v, grad), calls)
        print(f"| {name} | {took * 1e3:.3f} | {difference:.1e} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", type=int, default=sum(PACK))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gemm_table(args.rows, args.rank, getattr(torch, args.dtype), args.calls)
    attention_table(PACK, args.calls)


if __name__ == "__main__":
    main()
