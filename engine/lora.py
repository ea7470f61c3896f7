"""A leaner forward for peft's LoRA linear layers while the engine trains them.

peft computes `base(x) + lora_B(lora_A(dropout(x))) * scaling`: two full-width passes over the
output (the scaling and the add) forward and again backward, and `lora_B`'s weight gradient as
`grad.T @ h`, a [out, L] x [L, r] product that MKL runs at ~10 GFLOP/s. Here the LoRA product is
accumulated into the base output in place, with the scaling as the GEMM's alpha:

    out = x @ W.T;  out += scaling * (dropout(x) @ A.T) @ B.T     (one addmm_)

which is the same function with the same parameters, so checkpoints, merging and serving are
peft's as before. Its backward gets B's gradient as `h.T @ grad` ([r, L] x [L, out], ~4x faster
on CPU) and no elementwise passes. Training SmolLM2-135M with LoRA on every linear layer, 245-token
steps on 2 CPU cores, ran 7-11% faster in fp32 and 7-18% faster under bf16 autocast
(bench/train_throughput, docs/benchmarks/training.md).

Anything else (adapters disabled or merged, several active adapters, DoRA and other variants,
extra arguments) takes peft's own forward.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F


def _lean_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return type(self).forward(self, x, *args, **kwargs)  # type: ignore[no-any-return]  # peft's Linear.forward is untyped
    name = self.active_adapters[0]
    if name not in self.lora_A or name in self.lora_variant:
        return type(self).forward(self, x, *args, **kwargs)  # type: ignore[no-any-return]  # peft's Linear.forward is untyped
    base = self.base_layer
    flat = x.reshape(-1, x.shape[-1])
    out = F.linear(flat, base.weight, base.bias)
    h = F.linear(self.lora_dropout[name](flat), self.lora_A[name].weight)
    # Under autocast `out` and `h` come out in the autocast dtype, while in-place ops are not
    # autocast: give addmm_ one dtype (casts of [L, r] and [r, out], small).
    b = self.lora_B[name].weight.t()
    out.addmm_(h.to(out.dtype), b.to(out.dtype), alpha=self.scaling[name])
    return out.view(*x.shape[:-1], out.shape[-1])


def use_lean_forward(model: torch.nn.Module) -> int:
    """Give every plain peft LoRA linear layer of `model` the lean forward; return how many."""
    from peft.tuners.lora import Linear

    count = 0
    for module in model.modules():
        if type(module) is Linear and not module.fan_in_fan_out:
            module.forward = MethodType(_lean_forward, module)  # type: ignore[method-assign]  # per instance, on purpose
            count += 1
    return count
